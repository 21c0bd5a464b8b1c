"""The public monitor of time to removal per hoster, its internal variant for analysts, and the
annual statistics a hotline publishes; all computed from the recorded states."""

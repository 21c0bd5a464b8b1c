"""The police liaison's workflow: the escalations of new material, and the police's say over
when its takedown goes out (received, hold, release)."""

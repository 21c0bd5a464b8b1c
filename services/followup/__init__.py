"""Follow-up after a notice: re-check until gone, remind, climb the ladder, record time to removal."""

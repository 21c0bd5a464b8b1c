"""Partner hotlines both ways: their status reports on our forwards, and our status updates on reports they forwarded to us."""

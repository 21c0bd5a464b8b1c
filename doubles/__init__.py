"""Loopback stand-ins for the outside world (hosting sites, an SMTP server, a partner
hotline), shared by ``hotline demo`` and the tests. Never used by the production stages."""

"""The web shell: who is calling (tokens, roles) and the FastAPI app every service's routes
are mounted on."""

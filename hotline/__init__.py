"""Platform code shared by every stage: settings, database, the two runtimes, web app, CLI."""

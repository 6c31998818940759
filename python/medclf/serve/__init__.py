"""The web app and API that serve a run."""

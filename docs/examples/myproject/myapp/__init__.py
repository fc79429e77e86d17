"""An app of yours: a FastAPI app with settings and a database of its own, into which
docs/guides/your-app.md wires a stage's jobs (copied to myapp/jobs/, with jobkit/ beside)."""

"""Stage 1: FastAPI's built-in BackgroundTasks."""

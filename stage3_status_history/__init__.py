"""Stage 2: ARQ + Redis: a separate worker process runs the jobs."""

"""Load tests: Locust scenarios (locustfile.py) and the stage comparison (compare.py)."""

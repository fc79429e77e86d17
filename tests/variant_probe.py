"""Run by tests/test_bench.py through devkit.variant: prints what the variant changed."""

import sqlalchemy as sa

import jobkit.db
import jobkit.tuning

database = jobkit.db.Database(sa.create_engine("sqlite://"), write_behind=True)
print(f"write_behind={database.write_behind} frozen={jobkit.tuning._frozen}")
database.close()

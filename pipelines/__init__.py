"""SQL pipelines: models, the planner (pure), the runner (the only code that executes)."""

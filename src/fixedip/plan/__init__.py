"""The planner: prices, the cost model and the options it ranks (renderers in plan.render)."""

"""HTTP layer: routes per resource, dependencies (authorization lives there), problem documents."""

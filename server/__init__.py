"""OTA server: registry, rollouts, delivery (issue 4)."""

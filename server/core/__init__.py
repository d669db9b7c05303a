"""Policy: publishing, offers, deltas, the fleet, authentication; opens the sessions and commits."""

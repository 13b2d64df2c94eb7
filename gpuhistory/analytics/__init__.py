"""Questions over the log: rollups, history at any resolution, incidents, retention."""

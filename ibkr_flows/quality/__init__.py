"""Quality gate for fetched bars: blocking row checks (quarantine) and session completeness (warning)."""

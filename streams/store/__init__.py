"""Local, on-disk copies of the stages' changelogs."""

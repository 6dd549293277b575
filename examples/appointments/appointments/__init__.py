"""A clinic's appointment-booking API: the sample application Conveyor's first
pipeline builds, tests and deploys. Python standard library only."""

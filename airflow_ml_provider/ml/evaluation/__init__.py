"""Model evaluation (TFMA), blessing and infra validation steps."""

"""Test support: the cluster and harness the integration tests run Airflow and MLflow with, fakes at the
boundaries that cannot exist here (the Kubernetes API), and the fixtures' data and models."""

"""sensors of airflow-ml-provider."""

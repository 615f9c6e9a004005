"""hooks of airflow-ml-provider."""

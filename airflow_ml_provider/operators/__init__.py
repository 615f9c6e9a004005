"""operators of airflow-ml-provider."""

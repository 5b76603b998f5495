"""The paper study's report (`make paper`): its finished runs read back from MLflow into tables and figures."""

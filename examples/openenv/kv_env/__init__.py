"""A key-value lookup environment served with OpenEnv (`openenv-core`): the model looks a key up and submits its
value. `models.py` holds the wire types, `server.py` the environment and its app, `client.py` the OpenEnv client and
`KeyValueEnv`, the class to pass as `GRPOTrainer(environment_factory=...)`."""

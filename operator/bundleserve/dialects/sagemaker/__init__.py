"""The SageMaker Runtime dialect: InvokeEndpoint, InvokeEndpointAsync, InvokeEndpointWithResponseStream."""

"""Ray Serve application: ingress, deployments, jobs, storage, auth, metrics."""

"""The cluster as the project sees it: GPU pools read from k8s/, instance types, pre-flight checks."""

"""The cluster as the project sees it: GPU pools read from k8s/, instance types, the pod skeleton
(podspec), pre-flight checks. Shared below the stage packages."""

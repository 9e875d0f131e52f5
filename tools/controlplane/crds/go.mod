// Not a program: pins the modules whose CRDs tests/cluster installs (the versions DESIGN.md names),
// so that `go mod download -json <module>` here fetches them, verified against go.sum, into the
// module cache. Nothing here is built or imported. Karpenter's CRDs come from the AWS provider
// (its NodePool and NodeClaim carry the AWS-specific validation EKS clusters run with).
module llmops.local/tools/controlplane/crds

go 1.25.0

require (
	github.com/aws/karpenter-provider-aws v1.14.1
	github.com/prometheus-operator/prometheus-operator v0.93.0
	sigs.k8s.io/gateway-api v1.6.1
)

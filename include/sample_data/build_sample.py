"""Regenerate the shipped sample raw dataset under include/sample_data/raw/ (deterministic).

The sample exists so the data-prep pipeline can be run and tested end to end without any external
data: a few hundred hand-written, technically correct records about Kubernetes, Amazon EKS,
Karpenter, GPUs, NeMo, vLLM, Airflow, MLflow and MLOps, in all four raw shapes, across three daily
partitions (JSONL everywhere, plus one Parquet file), with the defects the pipeline must handle
planted on purpose: exact and near duplicates, PII and secrets, Unicode noise and malformed lines.

The facts live here as Python data and the files are generated from them, because hand-editing
hundreds of JSON lines drifts and breaks; run `python -m include.sample_data.build_sample` after
changing anything and commit the result. `build()` returns the counts README.md reports and the
tests check.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "raw"
PARTITIONS = ("dt=2026-11-01", "dt=2026-11-02", "dt=2026-11-03")

# --- question / context / answer: (context, [(question, answer), ...]) --------------------------
QA: list[tuple[str, list[tuple[str, str]]]] = [
    # Kubernetes
    ("A Kubernetes Pod is the smallest deployable unit: one or more containers that share a network "
     "namespace, IP address and storage volumes and are always scheduled together on the same node. "
     "Pods are usually created by controllers such as Deployments, StatefulSets or Jobs rather than "
     "directly, because a bare Pod is not recreated if its node fails.",
     [("What do containers in the same Kubernetes Pod share?",
       "Containers in one Pod share a network namespace and IP address as well as the Pod's storage "
       "volumes, and they are always scheduled together on the same node."),
      ("Why are Pods usually created through a controller instead of directly?",
       "A bare Pod is not recreated when its node fails, so Pods are normally managed by controllers "
       "such as Deployments, StatefulSets or Jobs that replace them.")]),
    ("Resource requests tell the Kubernetes scheduler how much CPU and memory a container needs; a Pod "
     "is only placed on a node whose allocatable capacity can cover the sum of its requests. Limits are "
     "enforced at runtime by the kubelet and the container runtime through cgroups: a container that "
     "exceeds its CPU limit is throttled, while one that exceeds its memory limit is terminated with an "
     "OOMKilled status.",
     [("What happens when a container exceeds its memory limit in Kubernetes?",
       "It is terminated and reported as OOMKilled, because memory limits are enforced through cgroups "
       "and memory cannot be throttled the way CPU can."),
      ("How does the Kubernetes scheduler use resource requests?",
       "It only places a Pod on a node whose allocatable capacity can cover the sum of the Pod's CPU "
       "and memory requests.")]),
    ("Kubernetes assigns every Pod a quality-of-service class. A Pod is Guaranteed when every container "
     "sets CPU and memory limits equal to its requests, Burstable when at least one container sets a "
     "request or limit without meeting that rule, and BestEffort when no container sets any. Under node "
     "memory pressure the kubelet evicts BestEffort Pods first and Guaranteed Pods last.",
     [("When is a Pod in the Guaranteed QoS class?",
       "A Pod is Guaranteed when every container in it sets CPU and memory limits that are equal to its "
       "requests."),
      ("Which Pods are evicted first under node memory pressure?",
       "BestEffort Pods, which set no requests or limits, are evicted first; Guaranteed Pods are "
       "evicted last.")]),
    ("GPUs are exposed to Kubernetes as extended resources such as nvidia.com/gpu, advertised by a "
     "device plugin running on each GPU node. Extended resources cannot be overcommitted: a container "
     "requests whole GPUs by setting a limit, and if it also sets a request the two values must be "
     "equal. Fractions such as 0.5 are not allowed, so sharing a GPU requires MIG or time-slicing.",
     [("How does a container request a GPU in Kubernetes?",
       "It sets a limit on the extended resource, for example nvidia.com/gpu: 1; if a request is also "
       "set it must equal the limit."),
      ("Can a Kubernetes Pod request half a GPU with nvidia.com/gpu: 0.5?",
       "No. Extended resources such as nvidia.com/gpu only accept whole numbers and cannot be "
       "overcommitted, so sharing a GPU needs MIG or time-slicing instead.")]),
    ("Taints let a node repel Pods: a taint has a key, an optional value and an effect of NoSchedule, "
     "PreferNoSchedule or NoExecute. Only Pods with a matching toleration can be scheduled onto a "
     "tainted node, and a NoExecute taint also evicts running Pods that do not tolerate it. GPU node "
     "pools are commonly tainted with nvidia.com/gpu so that ordinary workloads do not occupy expensive "
     "accelerators.",
     [("Why are GPU nodes often tainted?",
       "Tainting GPU nodes, for example with nvidia.com/gpu, keeps ordinary Pods without a matching "
       "toleration off expensive accelerators."),
      ("What is the difference between the NoSchedule and NoExecute taint effects?",
       "NoSchedule only prevents new Pods without a matching toleration from being scheduled on the "
       "node, while NoExecute also evicts running Pods that do not tolerate the taint.")]),
    ("A toleration only permits a Pod to run on a tainted node; it does not attract the Pod there. To "
     "make sure a training Pod actually lands on GPU nodes, combine the toleration with a nodeSelector "
     "or node affinity rule that matches a node label, such as karpenter.sh/nodepool or an "
     "instance-type label. Required node affinity uses requiredDuringSchedulingIgnoredDuringExecution, "
     "which is checked only at scheduling time.",
     [("Does adding a toleration guarantee that a Pod runs on the tainted nodes?",
       "No. A toleration only allows the Pod onto tainted nodes; to steer it there you also need a "
       "nodeSelector or node affinity rule that matches the nodes' labels."),
      ("When is a requiredDuringSchedulingIgnoredDuringExecution rule evaluated?",
       "Only when the Pod is scheduled; if node labels change later, a Pod that is already running is "
       "not evicted.")]),
    ("A PodDisruptionBudget limits how many replicas of an application can be down at the same time "
     "because of voluntary disruptions such as node drains, cluster upgrades or Karpenter "
     "consolidation. It is expressed as minAvailable or maxUnavailable, as a number or a percentage. "
     "PDBs do not protect against involuntary disruptions such as hardware failure or a kernel panic.",
     [("Which disruptions does a PodDisruptionBudget protect against?",
       "Only voluntary disruptions, such as node drains, cluster upgrades or Karpenter consolidation; "
       "it does not help with involuntary ones like hardware failures."),
      ("How can a PodDisruptionBudget be specified?",
       "With either minAvailable or maxUnavailable, given as an absolute number or a percentage of the "
       "selected Pods.")]),
    ("The HorizontalPodAutoscaler (autoscaling/v2) periodically compares observed metrics with targets "
     "and changes the replica count of a Deployment or StatefulSet. Besides CPU and memory utilization "
     "it can scale on custom or external metrics, for example the number of waiting requests exported "
     "by a vLLM server through Prometheus and a metrics adapter. The controller checks metrics every 15 "
     "seconds by default.",
     [("Can an HPA scale an inference server on queue length instead of CPU?",
       "Yes. The autoscaling/v2 HPA can scale on custom or external metrics, such as the number of "
       "waiting requests a vLLM server exports through Prometheus and a metrics adapter."),
      ("How often does the HPA controller evaluate metrics by default?",
       "Every 15 seconds by default, after which it adjusts the replica count toward the target.")]),
    ("Kubernetes uses three kinds of probes. A failing liveness probe makes the kubelet restart the "
     "container, a failing readiness probe removes the Pod from Service endpoints without restarting "
     "it, and a startup probe holds off the other two until the application has started. Model servers "
     "that spend minutes loading weights should use a startup probe so that the liveness probe does not "
     "kill them while they load.",
     [("What happens when a readiness probe fails?",
       "The Pod is removed from the Service's endpoints so it stops receiving traffic, but the "
       "container is not restarted."),
      ("Why should a model server that loads large weights use a startup probe?",
       "A startup probe holds off liveness and readiness checks until the server has started, so a "
       "slow weight load is not mistaken for a hung container and restarted.")]),
    ("A StatefulSet gives each replica a stable identity: Pods are named with an ordinal (web-0, web-1 "
     "and so on), keep a stable DNS name through a headless Service, and get their own "
     "PersistentVolumeClaim from volumeClaimTemplates. By default Pods are created in order and each "
     "must be Running and Ready before the next one starts.",
     [("How does a StatefulSet give each replica its own storage?",
       "Through volumeClaimTemplates, which create a separate PersistentVolumeClaim for each Pod that "
       "stays bound to that replica's ordinal identity."),
      ("In what order does a StatefulSet create its Pods by default?",
       "In ordinal order starting at 0, waiting for each Pod to be Running and Ready before creating "
       "the next.")]),
    ("A Kubernetes Job runs Pods until a specified number of them complete successfully. The "
     "backoffLimit field, 6 by default, sets how many retries are allowed before the Job is marked "
     "failed, and activeDeadlineSeconds bounds its total run time. A CronJob creates Jobs on a cron "
     "schedule; its concurrencyPolicy of Allow, Forbid or Replace decides what happens when a new run "
     "is due while the previous one is still active.",
     [("What is the default backoffLimit of a Kubernetes Job?",
       "The default backoffLimit is 6 retries before the Job is marked as failed."),
      ("How do you stop a CronJob from starting a run while the previous one is still going?",
       "Set its concurrencyPolicy to Forbid, which skips the new run while the previous Job is still "
       "active.")]),
    ("Kubernetes RBAC grants permissions with Roles, which are namespaced, and ClusterRoles, which are "
     "cluster-wide, bound to users, groups or service accounts through RoleBindings and "
     "ClusterRoleBindings. Permissions are purely additive; there are no deny rules. An Airflow worker "
     "that launches training Pods needs a service account allowed to create, get, list, watch and "
     "delete pods in the training namespace.",
     [("Does Kubernetes RBAC support deny rules?",
       "No. RBAC permissions are purely additive, so access is only granted, never explicitly denied."),
      ("What permissions does an Airflow worker need to launch training Pods?",
       "Its service account needs permission to create, get, list, watch and delete pods in the "
       "training namespace, granted through a Role and a RoleBinding.")]),
    ("PriorityClasses assign an integer priority to Pods. When a high-priority Pod cannot be scheduled, "
     "the scheduler may preempt lower-priority Pods on a node to make room. Setting preemptionPolicy: "
     "Never on a PriorityClass lets its Pods queue ahead of lower-priority ones without evicting "
     "anything.",
     [("What does preemptionPolicy: Never do?",
       "Pods using that PriorityClass are placed ahead of lower-priority Pods in the scheduling queue "
       "but never evict other Pods to make room."),
      ("How can a production inference Pod get a node that is full of experiment Pods?",
       "If it has a higher PriorityClass, the scheduler can preempt the lower-priority experiment Pods "
       "on a node to make room for it.")]),
    ("topologySpreadConstraints spread Pods across failure domains such as zones or nodes. maxSkew is "
     "the largest allowed difference in matching Pods between any two domains, topologyKey names the "
     "node label that defines a domain (for example topology.kubernetes.io/zone), and "
     "whenUnsatisfiable chooses between DoNotSchedule and ScheduleAnyway.",
     [("What does maxSkew mean in a topology spread constraint?",
       "It is the largest allowed difference in the number of matching Pods between any two topology "
       "domains, such as zones."),
      ("How do you spread inference replicas across availability zones?",
       "Add a topologySpreadConstraint with topologyKey topology.kubernetes.io/zone and a small "
       "maxSkew, choosing DoNotSchedule or ScheduleAnyway for when it cannot be met.")]),
    ("PyTorch DataLoader workers and NCCL exchange data through shared memory in /dev/shm, which "
     "container runtimes limit to 64 MiB by default. On Kubernetes the usual fix is to mount an "
     "emptyDir volume with medium: Memory at /dev/shm, optionally with a sizeLimit; its contents count "
     "against the container's memory limit.",
     [("Why do PyTorch training Pods often mount an in-memory emptyDir at /dev/shm?",
       "Container runtimes limit /dev/shm to 64 MiB by default, which is too small for DataLoader "
       "workers and NCCL, so a memory-backed emptyDir is mounted there instead."),
      ("Does a memory-backed emptyDir count toward a container's memory limit?",
       "Yes. Data written to an emptyDir with medium: Memory counts against the container's memory "
       "limit.")]),
    ("A ResourceQuota caps the total resources a namespace may consume, including extended resources "
     "such as requests.nvidia.com/gpu, and the number of objects it may create. A LimitRange sets "
     "default requests and limits for containers that do not specify them and enforces per-container "
     "minimums and maximums.",
     [("How can a platform team cap the number of GPUs a team's namespace can use?",
       "Create a ResourceQuota in the namespace with requests.nvidia.com/gpu set to the allowed number "
       "of GPUs."),
      ("What does a LimitRange do for containers that do not set requests?",
       "It applies default requests and limits to them and enforces the minimum and maximum values "
       "allowed per container.")]),
    ("Kubernetes Secrets hold small pieces of sensitive data such as tokens or passwords. Values in a "
     "Secret manifest are only base64-encoded, which is an encoding, not encryption, so access should "
     "be restricted with RBAC and the API server should encrypt Secrets at rest. On EKS, workloads that "
     "need AWS credentials should use IAM roles through IRSA or EKS Pod Identity rather than static "
     "keys stored in Secrets.",
     [("Are Kubernetes Secret values encrypted because they are base64-encoded?",
       "No. Base64 is only an encoding; Secrets need RBAC restrictions and encryption at rest to be "
       "protected."),
      ("How should Pods on EKS get AWS credentials?",
       "Through IAM roles using IRSA or EKS Pod Identity, instead of static access keys stored in "
       "Kubernetes Secrets.")]),
    ("Init containers run to completion, one after another, before the application containers of a "
     "Pod start. If an init container fails, the kubelet retries it according to the Pod's "
     "restartPolicy. They are useful for steps such as downloading a model checkpoint from object "
     "storage into a shared volume before the server starts.",
     [("In what order do init containers run?",
       "Sequentially, each running to completion before the next starts, and all of them before the "
       "Pod's application containers."),
      ("Give one use of init containers in model serving.",
       "An init container can download a model checkpoint from object storage into a shared volume "
       "before the inference server container starts.")]),
    ("A node's allocatable resources are its capacity minus what is reserved for system daemons "
     "(system-reserved), for Kubernetes components such as the kubelet and container runtime "
     "(kube-reserved) and the hard eviction threshold. The scheduler places Pods against allocatable, "
     "not raw capacity, which is why a node with 64 GiB of memory cannot fit a Pod requesting 64 GiB.",
     [("Why can't a Pod requesting 64 GiB of memory fit on a node with 64 GiB?",
       "The scheduler uses allocatable resources, which subtract system-reserved, kube-reserved and the "
       "eviction threshold from capacity, so less than 64 GiB is available to Pods.")]),
    # Amazon EKS
    ("Amazon EKS runs the Kubernetes control plane as a managed service: AWS operates the API servers "
     "and etcd across multiple Availability Zones, scales them and replaces unhealthy instances. "
     "Customers run workloads on data-plane capacity they choose, such as managed node groups, "
     "self-managed nodes, Karpenter-provisioned instances or AWS Fargate.",
     [("Who operates etcd in an Amazon EKS cluster?",
       "AWS does; EKS runs the API servers and etcd as a managed control plane across multiple "
       "Availability Zones."),
      ("What options exist for EKS data-plane capacity?",
       "Managed node groups, self-managed nodes, Karpenter-provisioned EC2 instances and AWS "
       "Fargate.")]),
    ("IAM roles for service accounts (IRSA) lets a Pod assume an IAM role without node-level "
     "credentials. The cluster's OIDC issuer is registered as an IAM identity provider, the role's "
     "trust policy names the service account, and the service account is annotated with "
     "eks.amazonaws.com/role-arn. The AWS SDKs then exchange the projected service account token for "
     "temporary credentials.",
     [("Which annotation links a Kubernetes service account to an IAM role with IRSA?",
       "The eks.amazonaws.com/role-arn annotation on the service account, set to the ARN of the IAM "
       "role."),
      ("What must be registered in IAM before IRSA works?",
       "The cluster's OIDC issuer must be registered as an IAM OIDC identity provider, and the role's "
       "trust policy must name the service account.")]),
    ("EKS Pod Identity is a simpler alternative to IRSA. It runs the EKS Pod Identity Agent as an "
     "add-on and maps a service account to an IAM role with a pod identity association created through "
     "the EKS API, so no OIDC provider or service account annotation is needed. The same role can be "
     "reused across clusters without editing its trust policy for each cluster's OIDC issuer.",
     [("How does EKS Pod Identity associate a service account with an IAM role?",
       "Through a pod identity association created with the EKS API and served by the EKS Pod Identity "
       "Agent add-on, with no OIDC provider or annotation required."),
      ("Why is EKS Pod Identity easier to reuse across clusters than IRSA?",
       "Its role trust policy does not name each cluster's OIDC issuer, so the same IAM role can be "
       "associated in several clusters without editing the trust policy.")]),
    ("The Amazon VPC CNI plugin gives every Pod an IP address from the VPC subnet, attached to the node "
     "through elastic network interfaces (ENIs). The maximum number of Pods per node therefore depends "
     "on how many ENIs the instance type supports and how many IP addresses each ENI can hold. Prefix "
     "delegation assigns /28 IPv4 prefixes to ENIs instead of single addresses, which raises Pod density "
     "on small instances.",
     [("Why is the number of Pods per EKS node limited by instance type with the VPC CNI?",
       "Each Pod gets a VPC IP address from the node's ENIs, so the limit depends on how many ENIs the "
       "instance type supports and how many IPs each ENI holds."),
      ("What does VPC CNI prefix delegation change?",
       "It assigns /28 IPv4 prefixes to ENIs instead of individual addresses, allowing more Pods per "
       "node.")]),
    ("EKS access entries manage which IAM principals can reach the Kubernetes API, replacing edits to "
     "the aws-auth ConfigMap. An access entry maps an IAM role or user to Kubernetes groups or to an "
     "EKS access policy such as AmazonEKSClusterAdminPolicy, scoped to the cluster or to specific "
     "namespaces, and it is managed through the EKS API, so it can be audited and automated.",
     [("What do EKS access entries replace?",
       "They replace manual edits of the aws-auth ConfigMap for mapping IAM principals to Kubernetes "
       "permissions."),
      ("How can an access entry limit an IAM role to certain namespaces?",
       "By associating an EKS access policy with the entry and scoping it to specific namespaces "
       "instead of the whole cluster.")]),
    ("The EKS-optimized accelerated AMIs include the NVIDIA driver and the NVIDIA container toolkit, "
     "so GPU nodes can run CUDA containers without installing drivers at boot. The NVIDIA device "
     "plugin still has to run in the cluster to advertise nvidia.com/gpu to the scheduler.",
     [("Do EKS accelerated AMIs remove the need for the NVIDIA device plugin?",
       "No. The AMI provides the NVIDIA driver and container toolkit, but the device plugin must still "
       "run to advertise nvidia.com/gpu to the scheduler."),
      ("What do EKS-optimized accelerated AMIs include for GPU nodes?",
       "They include the NVIDIA driver and the NVIDIA container toolkit, so CUDA containers run without "
       "installing drivers at boot.")]),
    ("EKS workloads use CSI drivers for persistent storage. Amazon EBS volumes, through the EBS CSI "
     "driver, are bound to a single Availability Zone, so a Pod using one must run in that zone. FSx "
     "for Lustre offers a shared parallel file system for high-throughput training data and can be "
     "linked to an S3 bucket, and the Mountpoint for Amazon S3 CSI driver exposes a bucket as a file "
     "system for read-heavy workloads such as loading model weights.",
     [("Why must a Pod with an EBS-backed volume run in a particular Availability Zone?",
       "An EBS volume is bound to a single Availability Zone, so the Pod that mounts it has to be "
       "scheduled in that zone."),
      ("Which storage option suits high-throughput shared training data on EKS?",
       "FSx for Lustre, a shared parallel file system that can be linked to an S3 bucket.")]),
    ("AWS Fargate runs each EKS Pod in its own isolated environment without managing nodes, selected "
     "through Fargate profiles that match namespaces and labels. Fargate does not support GPUs, "
     "DaemonSets or privileged containers, so GPU training and inference on EKS run on EC2 nodes.",
     [("Can GPU training Pods run on EKS Fargate?",
       "No. Fargate does not support GPUs, so GPU workloads on EKS have to run on EC2 nodes."),
      ("How does EKS decide which Pods run on Fargate?",
       "Fargate profiles select Pods by namespace and labels; matching Pods run on Fargate in their own "
       "isolated environment.")]),
    ("Each Kubernetes minor version on Amazon EKS gets 14 months of standard support after it becomes "
     "available on EKS, followed by 12 months of extended support at an additional cost. Clusters are "
     "upgraded one minor version at a time: first the control plane, then add-ons and the data-plane "
     "nodes.",
     [("How long is standard support for a Kubernetes version on EKS?",
       "14 months after the version becomes available on EKS, followed by 12 months of extended support "
       "at extra cost."),
      ("In what order is an EKS cluster upgraded?",
       "One minor version at a time, upgrading the control plane first and then the add-ons and "
       "data-plane nodes.")]),
    ("Managed node groups are backed by EC2 Auto Scaling groups that EKS creates and updates, draining "
     "nodes during upgrades. Cluster Autoscaler scales those groups by changing their desired size, "
     "which works best when each group holds similar instance types. Karpenter instead launches "
     "instances directly through the EC2 Fleet API, choosing among many instance types for the pending "
     "Pods.",
     [("How does Karpenter launch nodes differently from Cluster Autoscaler?",
       "Cluster Autoscaler changes the desired size of Auto Scaling groups, while Karpenter launches EC2 "
       "instances directly through the EC2 Fleet API and can choose among many instance types."),
      ("What backs an EKS managed node group?",
       "An EC2 Auto Scaling group that EKS creates and manages, draining nodes during upgrades.")]),
    ("Elastic Fabric Adapter (EFA) is a network interface for EC2 that provides OS-bypass "
     "communication for tightly coupled workloads. Multi-node training uses EFA through NCCL with the "
     "aws-ofi-nccl plugin; a p5.48xlarge offers up to 3,200 Gbps of EFA networking. On EKS the EFA "
     "device plugin advertises vpc.amazonaws.com/efa so Pods can request EFA interfaces.",
     [("How do Pods on EKS get EFA interfaces?",
       "The EFA device plugin advertises the vpc.amazonaws.com/efa resource, and Pods request it like "
       "any other extended resource."),
      ("How does NCCL use EFA for multi-node training?",
       "Through the aws-ofi-nccl plugin, which lets NCCL use EFA's OS-bypass networking between "
       "nodes.")]),
    ("EKS add-ons are curated versions of operational software such as the Amazon VPC CNI, CoreDNS, "
     "kube-proxy, the EBS CSI driver and the EKS Pod Identity Agent that EKS can install and update. "
     "Each add-on version is validated against the cluster's Kubernetes version, and its configuration "
     "can be customized through configuration values.",
     [("Name some software available as Amazon EKS add-ons.",
       "The Amazon VPC CNI, CoreDNS, kube-proxy, the EBS CSI driver and the EKS Pod Identity Agent.")]),
    # Karpenter
    ("In Karpenter v1 a NodePool (karpenter.sh/v1) describes what nodes Karpenter may create: "
     "requirements on labels such as instance family, capacity type and architecture, taints, "
     "disruption settings and resource limits. It references an EC2NodeClass (karpenter.k8s.aws/v1) "
     "that holds AWS-specific settings such as the AMI selector, subnets, security groups, IAM role and "
     "block device mappings.",
     [("What is the difference between a Karpenter NodePool and an EC2NodeClass?",
       "A NodePool describes which nodes may be created (requirements, taints, disruption and limits), "
       "while the EC2NodeClass it references holds AWS-specific settings like AMI, subnets, security "
       "groups and IAM role."),
      ("Where are subnets and security groups configured for Karpenter nodes?",
       "In the EC2NodeClass, which a NodePool references for its AWS-specific settings.")]),
    ("A NodePool requirement on karpenter.sh/capacity-type chooses between spot and on-demand "
     "capacity. When both are allowed, Karpenter prefers Spot and uses the price-capacity-optimized "
     "allocation strategy, falling back to On-Demand when no Spot capacity fits. Long single-node "
     "training runs without frequent checkpoints are often pinned to on-demand to avoid interruptions.",
     [("Which label selects Spot or On-Demand capacity in a Karpenter NodePool?",
       "karpenter.sh/capacity-type, with values such as spot and on-demand."),
      ("What does Karpenter do when a NodePool allows both Spot and On-Demand?",
       "It prefers Spot using the price-capacity-optimized allocation strategy and falls back to "
       "On-Demand when no Spot capacity fits.")]),
    ("Karpenter's disruption controller can consolidate a cluster to cut cost. With consolidationPolicy "
     "WhenEmptyOrUnderutilized it deletes nodes whose Pods fit elsewhere or replaces them with cheaper "
     "instances; with WhenEmpty it only removes nodes that run no workload Pods. consolidateAfter sets "
     "how long Karpenter waits after Pods are added or removed before consolidating a node.",
     [("What is the difference between WhenEmpty and WhenEmptyOrUnderutilized in Karpenter?",
       "WhenEmpty only removes nodes without workload Pods, while WhenEmptyOrUnderutilized also deletes "
       "or replaces underutilized nodes whose Pods can run elsewhere or on a cheaper instance."),
      ("What does consolidateAfter control?",
       "How long Karpenter waits after Pods are added to or removed from a node before it considers "
       "consolidating that node.")]),
    ("Disruption budgets in a NodePool limit how many nodes Karpenter may voluntarily disrupt at once, "
     "for example nodes: 10%, and can be restricted to a schedule and duration. Individual Pods can "
     "block voluntary disruption of their node with the annotation karpenter.sh/do-not-disrupt: "
     "\"true\", which is useful for long-running training jobs.",
     [("How can a training Pod stop Karpenter from consolidating its node?",
       "Set the Pod annotation karpenter.sh/do-not-disrupt to \"true\", which blocks voluntary "
       "disruption of the node while the Pod runs."),
      ("What does a NodePool disruption budget of nodes: 10% mean?",
       "Karpenter may voluntarily disrupt at most 10% of the NodePool's nodes at the same time.")]),
    ("Karpenter handles Spot interruption notices, scheduled maintenance events and instance state "
     "changes when it is configured with an SQS interruption queue fed by EventBridge rules. On a Spot "
     "interruption warning, which arrives two minutes before reclamation, Karpenter taints and drains "
     "the node and starts a replacement right away.",
     [("How much warning does a Spot interruption give?",
       "A Spot interruption notice arrives two minutes before the instance is reclaimed."),
      ("What does Karpenter need in order to react to Spot interruptions?",
       "An SQS interruption queue that receives EventBridge events, configured in Karpenter's settings; "
       "it then taints and drains the node and launches a replacement.")]),
    ("A NodePool's limits cap the total resources of all nodes it creates, such as cpu: 1000 or "
     "nvidia.com/gpu: 16; once reached, Karpenter stops launching nodes from that pool. When several "
     "NodePools match a Pod, the one with the highest weight is tried first. expireAfter, 720h by "
     "default, replaces nodes after a maximum lifetime so they pick up new AMIs.",
     [("How can a Karpenter NodePool cap the number of GPUs it provisions?",
       "Set limits on the NodePool, for example nvidia.com/gpu: 16; Karpenter stops launching nodes "
       "from that pool once the limit is reached."),
      ("What is the default expireAfter for Karpenter nodes?",
       "720 hours, after which Karpenter replaces the node so it picks up new AMIs.")]),
    ("An EC2NodeClass selects AMIs with amiSelectorTerms, for example an alias such as al2023@latest or "
     "bottlerocket@latest, or explicit IDs and tags. When the resolved AMI or another setting changes, "
     "existing nodes no longer match their NodePool and EC2NodeClass; Karpenter marks them as drifted "
     "and replaces them, respecting disruption budgets.",
     [("What does Karpenter do with nodes whose AMI no longer matches the EC2NodeClass?",
       "It marks them as drifted and replaces them, while respecting the NodePool's disruption "
       "budgets."),
      ("How can an EC2NodeClass always use the newest Amazon Linux 2023 AMI?",
       "Use an amiSelectorTerms alias such as al2023@latest.")]),
    ("A typical GPU NodePool restricts karpenter.k8s.aws/instance-family to GPU families such as p5, "
     "p4d, g6e or g5, adds the taint nvidia.com/gpu:NoSchedule, and relies on the Pod's nvidia.com/gpu "
     "limit to pick an instance with enough GPUs. Because Karpenter bin-packs pending Pods, it may "
     "choose one large instance for several small GPU Pods.",
     [("How does Karpenter pick an instance type for a Pod that needs 8 GPUs?",
       "It considers the instance types allowed by the NodePool requirements, such as the p5 family, "
       "and chooses one whose GPU count covers the Pod's nvidia.com/gpu limit."),
      ("Why add an nvidia.com/gpu:NoSchedule taint to a GPU NodePool?",
       "So that only Pods that tolerate the taint, typically GPU workloads, are scheduled on those "
       "expensive nodes.")]),
    # GPUs
    ("The NVIDIA GPU Operator automates the software a Kubernetes GPU node needs: the driver, the "
     "NVIDIA container toolkit, the device plugin that advertises nvidia.com/gpu, GPU Feature Discovery "
     "labels, the DCGM exporter for metrics and the MIG manager. On nodes whose AMI already ships the "
     "driver and toolkit, those components can be disabled in the operator.",
     [("What components does the NVIDIA GPU Operator deploy?",
       "The NVIDIA driver, container toolkit, device plugin, GPU Feature Discovery, the DCGM exporter "
       "and the MIG manager."),
      ("Should the GPU Operator install drivers on EKS accelerated AMIs?",
       "Not necessarily; when the AMI already ships the driver and container toolkit, those operator "
       "components can be disabled.")]),
    ("Multi-Instance GPU (MIG) partitions an A100, H100 or H200 into up to seven isolated GPU "
     "instances, each with its own compute, memory and cache slices. Unlike time-slicing, MIG provides "
     "hardware isolation of memory and faults, which makes it a good fit for running several small "
     "inference models on one GPU.",
     [("How many MIG instances can an H100 be split into?",
       "Up to seven isolated GPU instances, each with its own compute, memory and cache slices."),
      ("How does MIG differ from GPU time-slicing?",
       "MIG gives each instance dedicated compute, memory and cache with hardware isolation, while "
       "time-slicing only shares the GPU in time without memory or fault isolation.")]),
    ("GPU time-slicing, configured in the NVIDIA device plugin, advertises each physical GPU as several "
     "replicas so multiple Pods can share it in turns. There is no memory or fault isolation between "
     "the Pods, and one Pod can exhaust the GPU memory of the others, so it suits development notebooks "
     "and light inference rather than production training.",
     [("What is the main risk of GPU time-slicing?",
       "There is no memory or fault isolation, so one Pod can exhaust GPU memory or disrupt others "
       "sharing the same GPU.")]),
    ("NVIDIA DCGM exporter publishes GPU telemetry in Prometheus format, including utilization "
     "(DCGM_FI_DEV_GPU_UTIL), framebuffer memory used, temperature, power draw and XID errors. Running "
     "it as a DaemonSet on GPU nodes lets teams alert on idle expensive GPUs or on hardware errors "
     "before a training job fails.",
     [("Which metric does DCGM exporter use for GPU utilization?",
       "DCGM_FI_DEV_GPU_UTIL, published in Prometheus format."),
      ("Why run the DCGM exporter on GPU nodes?",
       "It exposes GPU utilization, memory, temperature, power and XID errors, so teams can alert on "
       "idle GPUs or hardware faults before jobs fail.")]),
    ("The NVIDIA H100 SXM has 80 GB of HBM3 memory with about 3.35 TB/s of bandwidth, while the H200 "
     "raises this to 141 GB of HBM3e at 4.8 TB/s. The A100 comes in 40 GB and 80 GB variants. On AWS, "
     "p5.48xlarge instances have eight H100 GPUs, p5e and p5en instances have eight H200 GPUs, and "
     "p4d.24xlarge instances have eight A100 40 GB GPUs.",
     [("How much memory does an NVIDIA H200 have?",
       "141 GB of HBM3e with about 4.8 TB/s of bandwidth."),
      ("Which GPUs does a p5.48xlarge instance have?",
       "Eight NVIDIA H100 GPUs, each with 80 GB of HBM3 memory.")]),
    ("Smaller EC2 GPU instances suit inference and experiments: g5 instances use NVIDIA A10G GPUs with "
     "24 GB of memory, g6 instances use NVIDIA L4 GPUs with 24 GB, and g6e instances use L40S GPUs with "
     "48 GB. A 7B-parameter model in 16-bit precision needs about 14 GB for its weights alone, so it "
     "fits on a single 24 GB GPU with room for the KV cache.",
     [("Can a 7B model in BF16 be served on a single g5 GPU?",
       "Yes. Its weights need about 14 GB in 16-bit precision, which fits on the A10G's 24 GB and "
       "leaves some room for the KV cache."),
      ("Which GPU and memory does a g6e instance have?",
       "An NVIDIA L40S GPU with 48 GB of memory.")]),
    ("Full fine-tuning with mixed precision and the Adam optimizer needs roughly 16 bytes per parameter "
     "before activations: 2 for BF16 weights, 2 for gradients, 4 for FP32 master weights and 8 for the "
     "two Adam moments. A 7B model therefore needs about 112 GB just for model and optimizer state, "
     "which is why it is sharded across GPUs or fine-tuned with parameter-efficient methods such as "
     "LoRA.",
     [("About how much GPU memory does full fine-tuning of a 7B model with Adam need?",
       "Roughly 112 GB for weights, gradients and optimizer state at about 16 bytes per parameter, "
       "before counting activations."),
      ("Where do the 16 bytes per parameter in mixed-precision Adam training come from?",
       "2 bytes for BF16 weights, 2 for gradients, 4 for FP32 master weights and 8 for the two Adam "
       "moment estimates.")]),
    ("BF16 keeps the 8-bit exponent of FP32 with a shorter 7-bit mantissa, so it covers the same "
     "numeric range and training rarely needs loss scaling. FP16 has a 5-bit exponent and a narrower "
     "range, so mixed-precision FP16 training uses dynamic loss scaling to keep small gradients from "
     "underflowing. A100, H100 and H200 GPUs support BF16 natively, and Hopper GPUs add FP8.",
     [("Why does BF16 training usually not need loss scaling?",
       "BF16 has the same 8-bit exponent as FP32 and therefore the same range, so small gradients "
       "rarely underflow."),
      ("Why does FP16 mixed-precision training use loss scaling?",
       "FP16 has only a 5-bit exponent, so dynamic loss scaling keeps small gradients from underflowing "
       "to zero.")]),
    ("Within a node, GPUs such as the eight H100s of a p5.48xlarge are connected by NVLink and "
     "NVSwitch, giving far more bandwidth than PCIe. NCCL implements collectives such as all-reduce, "
     "all-gather and reduce-scatter over NVLink inside the node and over EFA or InfiniBand between "
     "nodes. Tensor parallelism is normally kept inside a node because it communicates on every layer.",
     [("Why is tensor parallelism normally kept within a single node?",
       "It communicates on every layer, so it needs the high bandwidth of NVLink and NVSwitch inside a "
       "node rather than the slower network between nodes."),
      ("What does NCCL provide for distributed training?",
       "Collective operations such as all-reduce, all-gather and reduce-scatter, using NVLink inside a "
       "node and EFA or InfiniBand between nodes.")]),
    ("During inference a transformer stores keys and values for every processed token. The KV cache "
     "needs 2 x layers x KV heads x head dimension x bytes per element for each token, so long contexts "
     "and many concurrent sequences can use more memory than the weights. Grouped-query attention "
     "reduces the number of KV heads and therefore the cache size.",
     [("How is the KV cache size per token computed?",
       "It is 2 x number of layers x number of KV heads x head dimension x bytes per element, covering "
       "both keys and values."),
      ("How does grouped-query attention reduce inference memory?",
       "It uses fewer key-value heads than query heads, which shrinks the KV cache stored for every "
       "token.")]),
    # NeMo
    ("NVIDIA NeMo Framework is a scalable framework for training and customizing large language and "
     "multimodal models. It builds on Megatron Core for tensor, pipeline, context and expert "
     "parallelism and on PyTorch Lightning for the training loop; NeMo 2.0 replaced YAML configs with "
     "Python-based configuration and uses NeMo-Run to launch experiments locally, on Slurm or on "
     "Kubernetes.",
     [("What does NeMo Framework use for model parallelism?",
       "Megatron Core, which provides tensor, pipeline, context and expert parallelism."),
      ("How is a NeMo 2.0 experiment configured and launched?",
       "With Python-based configuration instead of YAML, launched through NeMo-Run locally, on Slurm or "
       "on Kubernetes.")]),
    ("LoRA (low-rank adaptation) freezes the pretrained weights and trains small low-rank matrices "
     "added to selected layers, usually the attention projections. The rank, often 8 to 64, controls "
     "adapter size. Because only the adapters are trained and saved, a LoRA checkpoint is a few hundred "
     "megabytes or less instead of the full model, and many adapters can share one base model at "
     "serving time.",
     [("Which weights are trained in LoRA fine-tuning?",
       "Only small low-rank matrices added to selected layers, usually attention projections; the "
       "pretrained weights stay frozen."),
      ("Why are LoRA checkpoints small?",
       "Only the adapter matrices are trained and saved, not the full model, so a checkpoint is a few "
       "hundred megabytes or less.")]),
    ("NeMo supervised fine-tuning reads JSONL files where each line is a JSON object, by default with "
     "an input field holding the prompt and an output field holding the target response; a prompt "
     "template joins them. Loss is usually computed only on the output tokens so the model learns to "
     "answer rather than to reproduce prompts.",
     [("What format does NeMo expect for SFT training data by default?",
       "JSONL, one JSON object per line with an input field for the prompt and an output field for the "
       "target response."),
      ("Why is SFT loss usually computed only on output tokens?",
       "So the model learns to produce answers rather than to reproduce the prompt.")]),
    ("Tensor parallelism splits the weight matrices of each layer across GPUs, so every GPU holds a "
     "slice of every layer. Pipeline parallelism assigns consecutive groups of layers to different GPUs "
     "as stages and feeds them micro-batches to keep the stages busy; the idle time at the start and "
     "end of each batch is called the pipeline bubble. The product of the tensor, pipeline and data "
     "parallel sizes equals the number of GPUs.",
     [("What is the pipeline bubble?",
       "The idle time at the start and end of each batch when not all pipeline stages have "
       "micro-batches to process."),
      ("How do tensor and pipeline parallelism split a model differently?",
       "Tensor parallelism splits each layer's weight matrices across GPUs, while pipeline parallelism "
       "assigns consecutive groups of layers to different GPUs as stages.")]),
    ("Sequence packing concatenates several short training examples into one sequence up to the "
     "maximum length, with attention masks that keep examples from attending to each other. On "
     "instruction datasets with many short samples it removes most padding tokens and can "
     "substantially increase training throughput.",
     [("What does sequence packing do?",
       "It concatenates several short examples into one sequence up to the maximum length, with masks "
       "that keep them from attending to each other."),
      ("Why does sequence packing speed up fine-tuning on short instructions?",
       "It removes most of the padding tokens, so less compute is wasted per batch.")]),
    ("NeMo's distributed optimizer shards optimizer states and FP32 master weights across "
     "data-parallel ranks, similar to ZeRO stage 1, which lowers memory per GPU. Activation "
     "recomputation, also called activation checkpointing, discards selected activations in the "
     "forward pass and recomputes them during the backward pass, trading extra compute for memory.",
     [("What does the NeMo distributed optimizer shard?",
       "The optimizer states and FP32 master weights, across data-parallel ranks, similar to ZeRO "
       "stage 1."),
      ("What is the trade-off of activation recomputation?",
       "It saves memory by discarding activations in the forward pass, at the cost of extra compute to "
       "recompute them during the backward pass.")]),
    ("In Megatron-based training the global batch size equals the micro-batch size times the "
     "data-parallel size times the number of gradient accumulation steps. With a micro-batch of 2, 8 "
     "data-parallel ranks and a global batch of 128, each optimizer step accumulates gradients over 8 "
     "micro-batches per rank.",
     [("How is the global batch size defined in NeMo and Megatron training?",
       "Global batch size = micro-batch size x data-parallel size x gradient accumulation steps."),
      ("With micro-batch 2, data parallel 8 and global batch 128, how many accumulation steps are used?",
       "8 gradient accumulation steps per optimizer step, since 2 x 8 x 8 = 128.")]),
    ("NeMo 2.0 saves checkpoints as directories in the Megatron distributed checkpoint format, so they "
     "can be loaded with a different parallel layout than the one used to save them. For serving with "
     "vLLM or Hugging Face tools, a fine-tuned model is exported to the Hugging Face format, and a LoRA "
     "adapter can either be exported separately or merged into the base weights.",
     [("Can a NeMo 2.0 checkpoint be loaded with a different tensor-parallel size?",
       "Yes. The distributed checkpoint format can be loaded with a different parallel layout than the "
       "one used to save it."),
      ("How is a NeMo fine-tuned model prepared for vLLM?",
       "It is exported to the Hugging Face format; a LoRA adapter can be exported separately or merged "
       "into the base weights.")]),
    ("NeMo Curator is NVIDIA's GPU-accelerated library for preparing training data. It provides exact "
     "deduplication by hashing, fuzzy deduplication with MinHash and locality-sensitive hashing, "
     "semantic deduplication with embeddings, heuristic and classifier-based quality filters, and PII "
     "identification and redaction.",
     [("How does NeMo Curator find near-duplicate documents?",
       "With fuzzy deduplication based on MinHash signatures and locality-sensitive hashing."),
      ("Which data preparation steps does NeMo Curator offer?",
       "Exact, fuzzy and semantic deduplication, heuristic and classifier-based quality filtering, and "
       "PII identification and redaction.")]),
    ("Context parallelism splits the sequence dimension of long inputs across GPUs, so each GPU "
     "processes part of the tokens for every layer; it is used for long-context training where the "
     "activations of one sequence do not fit on one GPU. Megatron's sequence parallelism is different: "
     "it works together with tensor parallelism and shards the activations of layer norm and dropout "
     "along the sequence.",
     [("When is context parallelism useful?",
       "For long-context training, when the activations of a single sequence do not fit on one GPU; it "
       "splits the sequence dimension across GPUs.")]),
    # vLLM
    ("vLLM's PagedAttention stores the KV cache in fixed-size blocks that need not be contiguous, much "
     "like virtual memory pages. This nearly eliminates fragmentation, lets sequences share blocks for "
     "common prefixes and allows many more requests to be batched on the same GPU.",
     [("How does PagedAttention manage the KV cache?",
       "It stores the KV cache in fixed-size blocks that need not be contiguous, like virtual memory "
       "pages, which nearly eliminates fragmentation."),
      ("Why does PagedAttention increase throughput?",
       "With little memory lost to fragmentation and shared prefix blocks, many more requests fit in "
       "one batch on the same GPU.")]),
    ("vLLM uses continuous batching: the scheduler adds new requests to the running batch at every "
     "iteration and removes finished ones, instead of waiting for the whole batch to finish. Chunked "
     "prefill splits long prompts into pieces so prefill work can be mixed with the decode steps of "
     "other requests.",
     [("What is continuous batching in vLLM?",
       "The scheduler adds new requests to the running batch and removes finished ones at every "
       "iteration rather than waiting for the whole batch to finish."),
      ("What does chunked prefill do?",
       "It splits long prompts into chunks so their prefill can be mixed with the decode steps of other "
       "requests.")]),
    ("vllm serve starts an OpenAI-compatible HTTP server, by default on port 8000, with endpoints such "
     "as /v1/completions, /v1/chat/completions and /v1/models, plus /health and a Prometheus /metrics "
     "endpoint. Existing OpenAI client libraries can talk to it by changing only the base URL.",
     [("Which endpoints does the vLLM OpenAI-compatible server expose?",
       "Endpoints such as /v1/completions, /v1/chat/completions and /v1/models, plus /health and a "
       "Prometheus /metrics endpoint."),
      ("What port does vllm serve listen on by default?",
       "Port 8000, serving an OpenAI-compatible API that existing clients reach by changing the base "
       "URL.")]),
    ("--tensor-parallel-size shards a model across the GPUs of one node, for example 8 for a 70B model "
     "on eight H100s, and --pipeline-parallel-size adds stages across nodes. --gpu-memory-utilization, "
     "0.9 by default, is the fraction of GPU memory vLLM may use for weights, activations and KV cache, "
     "and --max-model-len caps the context length to bound KV cache needs.",
     [("What does --gpu-memory-utilization control in vLLM?",
       "The fraction of GPU memory vLLM may use for weights, activations and KV cache; the default is "
       "0.9."),
      ("How do you serve a 70B model across eight GPUs with vLLM?",
       "Start it with --tensor-parallel-size 8 so the model is sharded across the eight GPUs of the "
       "node.")]),
    ("vLLM can serve LoRA adapters on top of one base model. Start the server with --enable-lora and "
     "register adapters with --lora-modules name=path; requests select an adapter by passing its name "
     "as the model. --max-loras limits how many adapters are active in a batch and --max-lora-rank the "
     "largest rank supported.",
     [("How do you serve a LoRA adapter with vLLM?",
       "Start the server with --enable-lora and register the adapter with --lora-modules name=path, then "
       "send requests with the adapter's name as the model."),
      ("What does --max-loras limit?",
       "The number of LoRA adapters that can be active in the same batch.")]),
    ("Automatic prefix caching lets vLLM reuse KV cache blocks when requests share a prompt prefix, "
     "such as a long system prompt or the same retrieved documents. vLLM also serves quantized models, "
     "including AWQ and GPTQ 4-bit weights and FP8 on Hopper GPUs, which reduce weight memory and leave "
     "more room for the KV cache.",
     [("When does automatic prefix caching help?",
       "When requests share a prompt prefix, such as a long system prompt or the same retrieved "
       "documents, because their KV cache blocks can be reused."),
      ("Which quantization methods can vLLM serve?",
       "Among others AWQ and GPTQ 4-bit weights and FP8 on Hopper GPUs.")]),
    ("vLLM exports Prometheus metrics such as vllm:num_requests_running and vllm:num_requests_waiting, "
     "along with time-to-first-token and time-per-output-token histograms. A growing number of waiting "
     "requests means the server is saturated, which makes it a good signal for autoscaling or for "
     "judging a canary deployment.",
     [("Which vLLM metric indicates that a server is saturated?",
       "A growing vllm:num_requests_waiting, the number of requests queued but not yet running."),
      ("Which latency metrics does vLLM export?",
       "Histograms of time-to-first-token and time-per-output-token, in Prometheus format.")]),
    ("Speculative decoding uses a small draft model or n-gram lookup to propose several tokens that the "
     "large model verifies in a single forward pass. Accepted tokens are kept and the output "
     "distribution is unchanged, so latency drops when the acceptance rate is high, at the cost of "
     "extra compute.",
     [("Does speculative decoding change the model's outputs?",
       "No. The large model verifies the proposed tokens, so the output distribution stays the same; "
       "only latency changes.")]),
    ("If the KV cache needed for --max-model-len does not fit in the memory left after loading the "
     "weights, vLLM fails at startup and suggests lowering max-model-len or raising "
     "gpu-memory-utilization. Sampling parameters such as temperature, top_p and max_tokens are set per "
     "request; temperature 0 gives greedy decoding.",
     [("What should you do if vLLM fails at startup because the KV cache does not fit?",
       "Lower --max-model-len or raise --gpu-memory-utilization, as the error message suggests."),
      ("How do you get greedy decoding from vLLM?",
       "Set temperature to 0 in the request's sampling parameters.")]),
    # Airflow
    ("Airflow 3 separates task execution from the metadata database: workers run tasks through the "
     "Task SDK and talk to the API server over the Task Execution API instead of connecting to the "
     "database directly. The components are the scheduler, the API server (which also serves the UI "
     "and replaces the webserver), the DAG processor, the triggerer and the workers.",
     [("How do Airflow 3 tasks communicate with the metadata database?",
       "They do not connect to it directly; tasks use the Task SDK and the Task Execution API served by "
       "the API server."),
      ("Which component replaces the webserver in Airflow 3?",
       "The API server, which serves the UI as well as the APIs.")]),
    ("In Airflow 3 DAG files are parsed by a separate DAG processor component, started with airflow "
     "dag-processor, rather than inside the scheduler. Parsed DAGs are serialized to the database and "
     "DAG versioning keeps earlier versions, so the UI shows the structure a past run actually used.",
     [("Which component parses DAG files in Airflow 3?",
       "The standalone DAG processor, started with airflow dag-processor, instead of the scheduler."),
      ("What does DAG versioning show in Airflow 3?",
       "The structure of the DAG version a past run actually used, because earlier serialized versions "
       "are kept.")]),
    ("Airflow 3 renamed datasets to assets. A task declares outlets=[Asset(\"s3://bucket/curated/\")] "
     "and another DAG uses schedule=[Asset(\"s3://bucket/curated/\")] to run whenever that asset is "
     "updated, which connects a data-prep pipeline to a training pipeline without time-based sensors.",
     [("What were assets called before Airflow 3?",
       "Datasets; Airflow 3 renamed them to assets."),
      ("How can a training DAG run whenever data prep publishes a new curated dataset?",
       "Give the data-prep task an Asset outlet and schedule the training DAG on that Asset, so it runs "
       "whenever the asset is updated.")]),
    ("Airflow 3 removed schedule_interval in favor of the single schedule argument, which accepts a "
     "cron string, a timedelta, a timetable, assets or None. It also changed the default of catchup to "
     "False, so a new DAG does not create runs for every missed interval since its start_date unless "
     "catchup is enabled.",
     [("What is the default value of catchup in Airflow 3?",
       "False; a new DAG does not create runs for missed intervals since its start_date unless catchup "
       "is enabled."),
      ("Which argument replaces schedule_interval in Airflow 3?",
       "The schedule argument, which takes a cron string, timedelta, timetable, assets or None.")]),
    ("KubernetesPodOperator, from the apache-airflow-providers-cncf-kubernetes package, launches each "
     "task as its own Pod, so a task can use a different image, resources, node selector and "
     "tolerations from the Airflow workers. In deferrable mode it hands the wait for pod completion to "
     "the triggerer, freeing the worker slot during long training runs.",
     [("Why use KubernetesPodOperator for GPU training tasks?",
       "Each task runs in its own Pod with its own image, GPU resources, node selector and tolerations, "
       "independent of the Airflow worker's environment."),
      ("What does deferrable mode change for KubernetesPodOperator?",
       "The wait for the pod to finish is handed to the triggerer, so the worker slot is freed during "
       "long runs.")]),
    ("A deferrable operator suspends itself by deferring with a trigger; the triggerer process runs "
     "many such triggers as asyncio coroutines and resumes the task on a worker when the trigger fires. "
     "Waiting on external systems this way uses almost no worker capacity, unlike a sensor in poke mode "
     "that holds a slot the whole time.",
     [("Which Airflow component runs triggers for deferred tasks?",
       "The triggerer, which runs many triggers as asyncio coroutines and resumes the task on a worker "
       "when a trigger fires."),
      ("Why are deferrable operators cheaper than sensors in poke mode?",
       "A poke-mode sensor holds a worker slot for the whole wait, while a deferred task frees it and "
       "waits inside the triggerer.")]),
    ("Dynamic task mapping creates task instances at runtime from data: calling .expand() on a task "
     "with a list, for example of shard paths returned by an upstream task, makes one mapped task "
     "instance per element, and .partial() fixes the arguments that are the same for all of them. "
     "Concurrency of mapped instances can be limited with max_active_tis_per_dag.",
     [("What does .partial() do in dynamic task mapping?",
       "It fixes the arguments that are the same for every mapped task instance, while .expand() "
       "supplies the values that vary."),
      ("How can a DAG process a variable number of shards in parallel?",
       "Have an upstream task return the list of shard paths and call .expand() on the processing task, "
       "creating one mapped task instance per shard.")]),
    ("XComs pass small values between tasks, such as a file path, a run ID or a metric. With the "
     "default backend they are stored in the metadata database, so large payloads like datasets or "
     "model weights should be written to object storage and only their URI passed through XCom. "
     "TaskFlow functions push their return value as an XCom automatically.",
     [("Should a task return a large DataFrame through XCom?",
       "No. With the default backend XComs are stored in the metadata database, so large data should go "
       "to object storage and only its URI be passed through XCom."),
      ("How do TaskFlow tasks push XComs?",
       "Their return value is pushed as an XCom automatically.")]),
    ("Airflow pools limit how many task instances can run at once across DAGs: each pool has a number "
     "of slots and each task takes pool_slots from it, which is a simple way to cap concurrent GPU "
     "jobs. Retries are configured per task with retries and retry_delay, and "
     "retry_exponential_backoff lengthens the delay between attempts.",
     [("How can Airflow cap the number of concurrent GPU training tasks?",
       "Assign the tasks to a pool with a fixed number of slots; each task takes pool_slots from it, so "
       "only that many run at once."),
      ("Which task arguments control retries in Airflow?",
       "retries and retry_delay, plus retry_exponential_backoff to lengthen the delay between "
       "attempts.")]),
    ("In Airflow 3 the logical date of a run may be None, for example for runs triggered by assets or "
     "triggered manually without one, so tasks should not assume it exists. Backfills are created "
     "through the API, CLI or UI and executed by the scheduler like other runs, rather than by a "
     "long-running CLI process.",
     [("Can the logical date of an Airflow 3 run be None?",
       "Yes. Runs triggered by assets, or manually without a logical date, may have none, so tasks "
       "should not assume it exists."),
      ("Who executes backfills in Airflow 3?",
       "The scheduler, like other runs; backfills are created through the API, CLI or UI instead of "
       "being run by a long-running CLI process.")]),
    ("Airflow tasks should be idempotent: running one twice for the same input must produce the same "
     "result without duplicates, because tasks are retried after failures and can be cleared and "
     "rerun. A common pattern is to write outputs to a path derived from the run, publish them "
     "atomically, and overwrite rather than append.",
     [("Why should Airflow tasks be idempotent?",
       "Tasks are retried after failures and can be cleared and rerun, so running them twice must give "
       "the same result without duplicates."),
      ("What is a common pattern for idempotent task output?",
       "Write to a path derived from the run, publish it atomically, and overwrite rather than "
       "append.")]),
    ("DAG authors in Airflow 3 import the public authoring interface from airflow.sdk, for example "
     "from airflow.sdk import dag, task, Asset. Importing internal modules such as airflow.models in "
     "task code is discouraged, because task code no longer has direct database access.",
     [("Where do Airflow 3 DAG authors import dag, task and Asset from?",
       "From airflow.sdk, the public authoring interface, for example from airflow.sdk import dag, "
       "task, Asset.")]),
    # MLflow
    ("MLflow Tracking records runs grouped into experiments. Each run stores parameters, metrics with "
     "optional step values, tags and artifacts such as checkpoints, plots or evaluation tables. A "
     "tracking server keeps run metadata in a backend store, typically a SQL database, and files in an "
     "artifact store such as S3.",
     [("What does an MLflow run record?",
       "Parameters, metrics with optional steps, tags and artifacts such as checkpoints, plots or "
       "evaluation tables."),
      ("Where does an MLflow tracking server keep metadata and files?",
       "Run metadata goes to a backend store, typically a SQL database, and files go to an artifact "
       "store such as S3.")]),
    ("The MLflow Model Registry versions models under a registered name. Aliases such as champion or "
     "challenger are mutable named references to a specific version and can be loaded with a URI like "
     "models:/llm-assistant@champion. Since MLflow 2.9 aliases and tags are recommended over the "
     "deprecated stages Staging and Production.",
     [("How do you load the champion version of a registered MLflow model?",
       "Use the alias in the model URI, for example models:/llm-assistant@champion."),
      ("What replaces MLflow model stages such as Production?",
       "Model version aliases and tags, which have been recommended over the deprecated stages since "
       "MLflow 2.9.")]),
    ("mlflow.autolog() enables automatic logging for supported libraries such as PyTorch Lightning, "
     "Transformers and scikit-learn, capturing parameters, metrics and models without explicit calls. "
     "For custom training loops, mlflow.log_metric(\"loss\", value, step=step) records a time series "
     "and mlflow.log_params logs a dictionary of hyperparameters.",
     [("How do you record a training loss curve in MLflow from a custom loop?",
       "Call mlflow.log_metric(\"loss\", value, step=step) at each step, which records the values as a "
       "time series."),
      ("What does mlflow.autolog() do?",
       "It enables automatic logging of parameters, metrics and models for supported libraries such as "
       "PyTorch Lightning, Transformers and scikit-learn.")]),
    ("An MLflow model signature describes the schema of a model's inputs, outputs and optional "
     "inference parameters. It can be inferred from example data with infer_signature and is stored "
     "with the logged model, so serving tools can validate requests against it.",
     [("What is an MLflow model signature?",
       "A description of the schema of a model's inputs, outputs and optional parameters, stored with "
       "the logged model so requests can be validated.")]),
    ("MLflow Tracing records the steps of a GenAI application, such as retrieval, prompt construction "
     "and LLM calls, as spans of a trace with inputs, outputs and latency. It can be enabled with "
     "autologging for libraries such as OpenAI and LangChain or with the @mlflow.trace decorator on "
     "custom functions.",
     [("How can a custom function be traced with MLflow?",
       "Decorate it with @mlflow.trace, which records its inputs, outputs and latency as a span."),
      ("What does an MLflow trace contain?",
       "Spans for the steps of a GenAI application, such as retrieval, prompt construction and LLM "
       "calls, with their inputs, outputs and latency.")]),
    ("A common promotion flow logs evaluation metrics for a candidate model version to MLflow, compares "
     "them with the current champion, and only moves the champion alias when the candidate meets the "
     "quality thresholds. Because the alias is just a pointer, rolling back means pointing it at the "
     "previous version.",
     [("How do you roll back a model promoted with an MLflow alias?",
       "Point the alias, such as champion, back at the previous model version, since the alias is only "
       "a pointer."),
      ("When should a candidate model receive the champion alias?",
       "Only after its evaluation metrics are logged, compared with the current champion and found to "
       "meet the quality thresholds.")]),
    ("mlflow.set_experiment(name) makes an experiment active, creating it if needed, and every run "
     "started afterwards is grouped under it. mlflow.start_run() is usually used as a context manager "
     "so the run is ended automatically, and marked failed if an exception escapes.",
     [("What happens when mlflow.set_experiment is called with a new name?",
       "The experiment is created and becomes the active one, so subsequent runs are grouped under "
       "it."),
      ("Why use mlflow.start_run() as a context manager?",
       "The run is then ended automatically, and marked failed if an exception is raised inside "
       "it.")]),
    # MLOps
    ("RAGAS evaluates retrieval-augmented generation. Faithfulness measures the fraction of claims in "
     "an answer that are supported by the retrieved context; answer relevancy measures how well the "
     "answer addresses the question; context precision checks whether relevant chunks are ranked high; "
     "and context recall measures how much of the reference answer is supported by the retrieved "
     "context.",
     [("What does the RAGAS faithfulness metric measure?",
       "The fraction of claims in the generated answer that are supported by the retrieved context."),
      ("Which RAGAS metric needs a reference answer?",
       "Context recall, which measures how much of the reference answer is supported by the retrieved "
       "context.")]),
    ("A canary release sends a small share of production traffic, for example 5 percent, to a new model "
     "version while the rest stays on the current one. Error rate, latency and quality metrics of both "
     "versions are compared, and traffic is increased step by step only while the canary stays "
     "healthy; otherwise it is rolled back.",
     [("What is a canary deployment for a model?",
       "Sending a small share of production traffic, such as 5 percent, to the new version while "
       "comparing its errors, latency and quality with the current one."),
      ("When is canary traffic increased?",
       "Step by step, only while the canary's metrics stay healthy compared with the current version; "
       "otherwise it is rolled back.")]),
    ("Exact duplicates are found by hashing a normalized form of each record. Near duplicates, which "
     "differ only in whitespace, punctuation or a few words, need similarity search: MinHash estimates "
     "the Jaccard similarity of word n-gram sets and locality-sensitive hashing groups likely matches "
     "into buckets, so not every pair has to be compared.",
     [("How are near-duplicate records found without comparing every pair?",
       "MinHash signatures estimate the Jaccard similarity of word n-grams, and locality-sensitive "
       "hashing buckets likely matches so only candidate pairs are compared."),
      ("How are exact duplicates detected?",
       "By hashing a normalized form of each record and grouping records with equal hashes.")]),
    ("Evaluation data must not leak into training data. If the same or near-identical questions appear "
     "in both, benchmark scores overstate quality. Splitting by a hash of the normalized question and "
     "deduplicating before the split keeps all copies of an item on the same side.",
     [("Why deduplicate before splitting train and evaluation sets?",
       "Otherwise copies of the same item can land on both sides, leaking evaluation data into training "
       "and inflating scores."),
      ("How can a split keep all copies of a question on the same side?",
       "Assign records by a hash of the normalized question, so identical questions always fall into "
       "the same split.")]),
    ("Training data should be scanned for personal data and secrets before fine-tuning, because "
     "language models can memorize and repeat rare strings such as e-mail addresses, phone numbers or "
     "API keys. Replacing each hit with a typed placeholder like [EMAIL] keeps the sentence structure "
     "for the model while removing the value.",
     [("Why redact PII before fine-tuning an LLM?",
       "Models can memorize and reproduce rare strings such as e-mail addresses, phone numbers or API "
       "keys from their training data."),
      ("Why use typed placeholders such as [EMAIL] when redacting?",
       "They remove the sensitive value but keep the sentence structure, so the model still learns from "
       "the example.")]),
    ("Reproducible training ties each model version to the exact dataset version, code commit, "
     "container image and hyperparameters that produced it. Recording a content hash of the curated "
     "dataset and its manifest as MLflow tags lets anyone trace a deployed model back to its data.",
     [("What should be recorded to reproduce a fine-tuned model?",
       "The exact dataset version, code commit, container image and hyperparameters that produced it."),
      ("How can a deployed model be traced back to its training data?",
       "By recording a content hash of the curated dataset and its manifest as tags on the MLflow run or "
       "model version.")]),
    ("A robust data pipeline does not fail on the first bad record. Records that cannot be parsed or "
     "fail validation are written to a quarantine area with the reason, and the run manifest counts "
     "them per reason. A threshold on the share of rejected records stops the pipeline when an upstream "
     "source is clearly broken.",
     [("What happens to invalid records in a pipeline with a quarantine?",
       "They are written to a quarantine area with the reason they were rejected, and the manifest "
       "counts them per reason."),
      ("Why set a threshold on the share of rejected records?",
       "To stop the pipeline when an upstream source is clearly broken instead of silently training on "
       "what remains.")]),
    ("After deployment, model quality can degrade as production inputs drift away from the training "
     "distribution. Monitoring input statistics, answer quality scores from sampled evaluations and "
     "user feedback helps detect drift and can trigger retraining on fresh data.",
     [("What is data drift in production ML?",
       "A shift of production inputs away from the distribution the model was trained on, which can "
       "degrade model quality."),
      ("How can drift be detected for an LLM application?",
       "By monitoring input statistics, quality scores from sampled evaluations and user feedback.")]),
    ("Fine-tuning on a narrow domain can cause catastrophic forgetting, where the model loses general "
     "abilities it had before. Mixing some general instruction data into the training set, using "
     "parameter-efficient methods such as LoRA and evaluating on general benchmarks as well as domain "
     "ones helps catch and limit it.",
     [("What is catastrophic forgetting in fine-tuning?",
       "The loss of general abilities a model had before, caused by fine-tuning on a narrow domain."),
      ("How can catastrophic forgetting be limited?",
       "Mix general instruction data into the training set, prefer parameter-efficient methods such as "
       "LoRA, and evaluate on general benchmarks too.")]),
    ("An evaluation gate blocks promotion of a fine-tuned model unless it meets fixed thresholds, for "
     "example minimum faithfulness and answer relevancy on a held-out set and no regression against "
     "the current champion. Automating the gate in the pipeline makes promotion decisions consistent "
     "and auditable.",
     [("What is an evaluation gate in an LLM pipeline?",
       "An automated check that blocks promotion of a model unless it meets fixed quality thresholds and "
       "does not regress against the current champion.")]),
    ("Raw fine-tuning data often arrives in several shapes: Alpaca-style instruction, input and output "
     "fields, prompt and completion pairs, question-context-answer records for RAG, and chat "
     "transcripts as lists of role and content messages. Normalizing them into one schema early lets "
     "deduplication, PII redaction and quality filters work the same way on all sources.",
     [("Which raw shapes are common for fine-tuning data?",
       "Instruction/input/output records, prompt/completion pairs, question/context/answer records and "
       "chat transcripts as lists of role and content messages."),
      ("Why normalize raw records into one schema early?",
       "So that deduplication, PII redaction and quality filters work the same way on every source.")]),
    ("Length filters drop records that are too short to teach anything or too long for the model's "
     "context window. A cheap estimate of about four characters per token for English text is usually "
     "enough for filtering, while exact counts require the model's tokenizer.",
     [("How are token counts estimated cheaply for length filtering?",
       "At about four characters per token for English text; exact counts need the model's "
       "tokenizer.")]),
]

# --- instruction / input / output -------------------------------------------------------------
INSTRUCTIONS: list[tuple[str, str, str]] = [
    ("Write the kubectl command that lists the Pods in the llm-training namespace together with the "
     "node each one runs on.", "",
     "kubectl get pods -n llm-training -o wide"),
    ("Write a kubectl command to find out why a Pod is stuck in Pending.",
     "Pod: nemo-sft-7c9f, namespace: llm-training",
     "kubectl describe pod nemo-sft-7c9f -n llm-training\n\nThe Events section at the end shows the "
     "scheduling failure, for example insufficient nvidia.com/gpu or an untolerated taint."),
    ("Summarize the following incident in one sentence.",
     "At 02:14 the vLLM canary started returning HTTP 503. The Pod was running but its readiness probe "
     "failed because the model was still loading after a restart. Traffic shifted back to the stable "
     "deployment automatically and recovered at 02:19.",
     "The vLLM canary returned 503s for about five minutes after a restart because its readiness probe "
     "failed while the model was still loading, until traffic moved back to the stable deployment."),
    ("Convert this Airflow 2 DAG argument to Airflow 3.", "schedule_interval=\"@daily\"",
     "schedule=\"@daily\"\n\nAirflow 3 removed schedule_interval in favor of the schedule argument."),
    ("Write the container resources block for a Pod that needs one GPU, 8 CPUs and 64 GiB of memory.",
     "",
     "resources:\n  requests:\n    cpu: \"8\"\n    memory: 64Gi\n  limits:\n    memory: 64Gi\n"
     "    nvidia.com/gpu: 1"),
    ("Write a toleration for the taint nvidia.com/gpu=true:NoSchedule.", "",
     "tolerations:\n- key: nvidia.com/gpu\n  operator: Equal\n  value: \"true\"\n  effect: NoSchedule"),
    ("Write the vllm serve command for the model in /models/llama-8b on two GPUs with an 8192-token "
     "context.", "",
     "vllm serve /models/llama-8b --tensor-parallel-size 2 --max-model-len 8192"),
    ("Explain this scheduler message in one sentence.",
     "0/12 nodes are available: 12 Insufficient nvidia.com/gpu. preemption: 0/12 nodes are available: "
     "12 No preemption victims found for incoming pod.",
     "No node has enough free nvidia.com/gpu for the Pod's request, and the scheduler found no "
     "lower-priority Pods it could preempt to make room."),
    ("Classify the Pod's last state and suggest a fix.",
     "Last State: Terminated, Reason: OOMKilled, Exit Code: 137",
     "The container was killed for exceeding its memory limit (exit code 137 is SIGKILL); raise the "
     "memory limit or reduce memory use, for example with a smaller batch size."),
    ("Write a Karpenter NodePool requirement that allows only Spot capacity.", "",
     "requirements:\n- key: karpenter.sh/capacity-type\n  operator: In\n  values: [\"spot\"]"),
    ("Write the MLflow call that sets the alias champion on version 7 of the registered model "
     "llm-assistant.", "",
     "from mlflow import MlflowClient\n\nMlflowClient().set_registered_model_alias(\"llm-assistant\", "
     "\"champion\", 7)"),
    ("Rewrite this instruction record as a chat message list.",
     "{\"instruction\": \"Name the Airflow 3 component that serves the UI.\", \"output\": \"The API "
     "server.\"}",
     "[{\"role\": \"user\", \"content\": \"Name the Airflow 3 component that serves the UI.\"}, "
     "{\"role\": \"assistant\", \"content\": \"The API server.\"}]"),
    ("Give TaskFlow code that maps a cleaning task over a list of shard paths.", "",
     "from airflow.sdk import task\n\n@task\ndef shards() -> list[str]:\n    return [\"s3://bucket/raw/"
     "part-0.jsonl\", \"s3://bucket/raw/part-1.jsonl\"]\n\n@task\ndef clean(path: str) -> str:\n    "
     "...\n\nclean.expand(path=shards())"),
    ("Compute the GPU memory needed for the weights of a 13B-parameter model in BF16.", "",
     "About 26 GB: BF16 stores 2 bytes per parameter, and 13 billion x 2 bytes is 26 GB, before the KV "
     "cache and activations."),
    ("Translate this for a product manager.",
     "We enabled Karpenter consolidation with WhenEmptyOrUnderutilized and a 10% disruption budget.",
     "Karpenter now automatically removes or replaces under-used servers to save money, but never "
     "touches more than 10% of them at a time."),
    ("List the RAGAS metrics that do not need a ground-truth answer.", "",
     "Faithfulness and answer relevancy only need the question, the retrieved contexts and the "
     "generated answer; context recall needs a reference answer."),
    ("Write a PodDisruptionBudget that keeps at least 2 vLLM replicas available.",
     "labels: app=vllm, namespace: llm-serving",
     "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: vllm\n  namespace: "
     "llm-serving\nspec:\n  minAvailable: 2\n  selector:\n    matchLabels:\n      app: vllm"),
    ("Fix this import for Airflow 3.", "from airflow.decorators import dag, task",
     "from airflow.sdk import dag, task"),
    ("Write the curl request that lists the models served by a local vLLM server.", "",
     "curl http://localhost:8000/v1/models"),
    ("Name the QoS class of this Pod.",
     "One container with requests cpu=2, memory=8Gi and limits cpu=2, memory=8Gi.",
     "Guaranteed, because the only container's CPU and memory limits equal its requests."),
    ("Write the service account annotation that links it to an IAM role with IRSA.",
     "role: arn:aws:iam::111122223333:role/airflow-s3",
     "metadata:\n  annotations:\n    eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/"
     "airflow-s3"),
    ("Explain what these NeMo settings imply for gradient accumulation.",
     "micro_batch_size=1, global_batch_size=64, 8 GPUs, tensor_model_parallel_size=2, "
     "pipeline_model_parallel_size=1",
     "With tensor parallel size 2 on 8 GPUs the data-parallel size is 4, so each optimizer step "
     "accumulates 64 / (1 x 4) = 16 micro-batches per data-parallel rank."),
    ("Write a Python snippet that logs a LoRA rank and the final eval loss to MLflow.", "",
     "import mlflow\n\nwith mlflow.start_run():\n    mlflow.log_param(\"lora_rank\", 16)\n    "
     "mlflow.log_metric(\"eval_loss\", 1.42)"),
    ("Suggest a PromQL expression that finds idle GPUs.", "",
     "avg_over_time(DCGM_FI_DEV_GPU_UTIL[30m]) < 5\n\nIt selects GPUs whose utilization stayed under 5% "
     "for 30 minutes, a sign that expensive accelerators sit idle."),
    ("Write a ResourceQuota that caps the llm-experiments namespace at 4 GPUs.", "",
     "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: gpu-quota\n  namespace: llm-experiments\n"
     "spec:\n  hard:\n    requests.nvidia.com/gpu: \"4\""),
]

# --- prompt / completion ----------------------------------------------------------------------
COMPLETIONS: list[tuple[str, str]] = [
    ("Q: What does kubectl cordon do?\nA:",
     " It marks a node as unschedulable so no new Pods are placed on it; Pods already running there are "
     "not evicted."),
    ("Q: What does kubectl drain do?\nA:",
     " It cordons the node and then evicts its Pods, respecting PodDisruptionBudgets, so the node can be "
     "maintained or removed."),
    ("Q: What is a Kubernetes DaemonSet?\nA:",
     " A controller that runs one copy of a Pod on every node, or on every node matching a selector, "
     "which suits node agents such as log shippers, the NVIDIA device plugin or the DCGM exporter."),
    ("Q: What is a Kubernetes namespace?\nA:",
     " A virtual partition of a cluster that scopes names, RBAC permissions, resource quotas and "
     "network policies for a group of resources."),
    ("Q: What does the kube-scheduler do?\nA:",
     " It assigns each new Pod to a node by filtering out nodes that cannot run it and then scoring the "
     "remaining ones."),
    ("Q: What is gradient accumulation?\nA:",
     " Summing gradients over several micro-batches before one optimizer step, which emulates a larger "
     "batch without more GPU memory."),
    ("Q: What is a learning rate warmup?\nA:",
     " Gradually increasing the learning rate from a small value over the first training steps, which "
     "stabilizes early training."),
    ("Complete the sentence: In Karpenter, a NodeClaim represents",
     " a request for a single node: Karpenter creates one for each instance it decides to launch and "
     "tracks that node's lifecycle through it."),
    ("Complete the sentence: The Airflow scheduler",
     " monitors DAGs and tasks, creates DAG runs when they are due and queues task instances whose "
     "dependencies are met for the executor."),
    ("Q: What is the difference between an epoch and a step?\nA:",
     " An epoch is one full pass over the training data, while a step is one optimizer update on one "
     "global batch."),
    ("Q: What does the temperature parameter do in sampling?\nA:",
     " It scales the logits before sampling: lower values make outputs more deterministic and higher "
     "values more diverse."),
    ("Q: What is top_p sampling?\nA:",
     " Nucleus sampling: the model samples only from the smallest set of tokens whose cumulative "
     "probability reaches p."),
    ("Q: What is an MLflow artifact?\nA:",
     " Any file logged to a run, such as a model checkpoint, a plot or an evaluation table, kept in the "
     "artifact store."),
    ("Q: What is a container image digest?\nA:",
     " A sha256 content hash of the image manifest; referencing an image by digest pins exactly the "
     "same content, unlike a mutable tag."),
    ("Q: What does the ImagePullBackOff status mean in Kubernetes?\nA:",
     " The kubelet failed to pull the container image, for example because of a wrong name or tag or "
     "missing registry credentials, and is backing off before retrying."),
    ("Q: What does CrashLoopBackOff mean?\nA:",
     " The container keeps exiting after it starts, and the kubelet waits with an increasing back-off "
     "delay before restarting it again."),
    ("Q: What is perplexity?\nA:",
     " The exponential of the average negative log-likelihood per token; lower perplexity means the "
     "model assigns higher probability to the text."),
    ("Q: What is a tokenizer?\nA:",
     " A component that splits text into tokens from a fixed vocabulary, often subwords learned with BPE "
     "or SentencePiece, and maps them to integer IDs."),
    ("Q: What is Amazon ECR?\nA:",
     " Amazon Elastic Container Registry, a managed registry for container images that EKS nodes pull "
     "with IAM-based authentication."),
    ("Q: What does an Airflow sensor do?\nA:",
     " It waits for a condition, such as a file appearing in object storage, before downstream tasks "
     "run; in deferrable mode the wait happens in the triggerer."),
]

# --- chat messages: [(role, content), ...] ------------------------------------------------------
SYS_EKS = "You are a helpful platform assistant for an ML team on Amazon EKS."
CHATS: list[list[tuple[str, str]]] = [
    [("system", SYS_EKS),
     ("user", "My training pod is Pending with 'untolerated taint {nvidia.com/gpu: true}'. What's wrong?"),
     ("assistant", "The GPU nodes carry an nvidia.com/gpu taint and your Pod has no matching toleration. "
                   "Add a toleration for the key nvidia.com/gpu with effect NoSchedule and keep the "
                   "nvidia.com/gpu limit so it lands on a GPU node.")],
    [("user", "How do I check GPU usage inside a running pod?"),
     ("assistant", "Run kubectl exec -it <pod> -- nvidia-smi to see utilization and memory per GPU; for "
                   "history, use the DCGM exporter metrics in Prometheus.")],
    [("user", "What's vLLM?"),
     ("assistant", "An open-source inference engine for LLMs that uses PagedAttention and continuous "
                   "batching for high throughput."),
     ("user", "Does it support LoRA?"),
     ("assistant", "Yes. Start it with --enable-lora and register adapters with --lora-modules; requests "
                   "pick an adapter by its name.")],
    [("system", "Answer briefly."),
     ("user", "Airflow 3: where do I import Asset from?"),
     ("assistant", "From the Task SDK: from airflow.sdk import Asset.")],
    [("user", "Is Karpenter a replacement for the Cluster Autoscaler?"),
     ("assistant", "For node provisioning, yes: Karpenter launches right-sized EC2 instances directly for "
                   "pending Pods instead of resizing Auto Scaling groups, and it also consolidates "
                   "underused nodes.")],
    [("user", "What learning rate should I start with for LoRA?"),
     ("assistant", "Common starting points are around 1e-4 to 2e-4, higher than for full fine-tuning; "
                   "tune it on a validation set.")],
    [("system", SYS_EKS),
     ("user", "Why did my spot GPU node disappear?"),
     ("assistant", "EC2 reclaimed the Spot instance. With an interruption queue Karpenter gets the "
                   "two-minute warning, drains the node and launches a replacement, so checkpoint your "
                   "training regularly to resume.")],
    [("user", "How do I promote a model in MLflow?"),
     ("assistant", "Set an alias such as champion on the model version that passed evaluation."),
     ("user", "And roll back?"),
     ("assistant", "Point the champion alias back at the previous version; clients loading "
                   "models:/name@champion pick it up on their next load.")],
    [("system", "You are an SRE."),
     ("user", "vLLM runs out of memory at startup on a 24 GB GPU with an 8B model."),
     ("assistant", "The BF16 weights take about 16 GB, leaving little room for the KV cache at the "
                   "default context length. Lower --max-model-len, or serve an FP8 or AWQ quantized "
                   "model.")],
    [("user", "What's the difference between a Deployment and a StatefulSet?"),
     ("assistant", "A Deployment manages interchangeable replicas, while a StatefulSet gives each replica "
                   "a stable name, network identity and its own persistent volume.")],
    [("user", "How do I make Airflow run my training DAG only after new data lands?"),
     ("assistant", "Schedule the training DAG on an Asset, for example "
                   "schedule=[Asset(\"s3://bucket/curated/\")], and declare that asset as an outlet of "
                   "the data-prep task.")],
    [("user", "Should tensor parallelism span nodes?"),
     ("assistant", "Usually not. Tensor parallelism communicates on every layer, so keep it within a node "
                   "on NVLink and use pipeline or data parallelism across nodes.")],
    [("user", "What does exit code 137 mean?"),
     ("assistant", "The process received SIGKILL (128 + 9); in Kubernetes that usually means the "
                   "container was OOMKilled for exceeding its memory limit.")],
    [("system", "You explain evaluation metrics."),
     ("user", "My RAG answers have low faithfulness. What does that mean?"),
     ("assistant", "Many claims in the answers are not supported by the retrieved context, so the model "
                   "adds information or hallucinates; check retrieval quality and instruct the model to "
                   "answer only from the context.")],
    [("user", "How many GPUs does a p4d.24xlarge have?"),
     ("assistant", "Eight NVIDIA A100 GPUs with 40 GB of memory each, connected by NVLink.")],
    [("user", "Can two Pods share one GPU?"),
     ("assistant", "Not with plain nvidia.com/gpu requests. Use MIG to split supported GPUs into isolated "
                   "instances, or enable time-slicing in the device plugin if isolation is not "
                   "required.")],
    [("user", "Where is my Airflow task's XCom stored?"),
     ("assistant", "With the default backend, in the Airflow metadata database, so only pass small values "
                   "such as paths or IDs.")],
    [("user", "Why is my DAG not running the missed days since start_date?"),
     ("assistant", "In Airflow 3 catchup defaults to False, so only the latest interval is scheduled; set "
                   "catchup=True or create a backfill for the missed dates.")],
    [("user", "What is a NodePool weight in Karpenter?"),
     ("assistant", "A priority: when several NodePools can satisfy a Pod, Karpenter tries the one with the "
                   "highest weight first.")],
    [("system", "You are a concise assistant."),
     ("user", "What's NeMo Curator?"),
     ("assistant", "An NVIDIA library for preparing LLM training data with deduplication, quality "
                   "filtering and PII redaction."),
     ("user", "Does it do fuzzy dedup?"),
     ("assistant", "Yes, with MinHash signatures and locality-sensitive hashing.")],
]

# --- records carrying PII or secrets (all fake: documentation ranges, test cards, AWS examples) ---
PII_QA: list[tuple[str, str, str]] = [  # (question, context, answer)
    ("How was the failed nightly data-prep run in ticket INC-4821 fixed?",
     "Ticket INC-4821 from priya.patel@example.com: the nightly data-prep DAG failed because the raw "
     "partition for dt=2026-10-31 was missing. The on-call engineer re-ran the upstream export and "
     "cleared the failed task, and the run succeeded.",
     "The upstream export was re-run to produce the missing raw partition and the failed task was "
     "cleared, after which the run succeeded."),
    ("How do I request access to the GPU experiment pool?",
     "Access to the shared GPU experiment pool is requested from the ML platform team "
     "(ml-platform@example.com). Requests should include the namespace, the number of GPUs and the "
     "expected duration.",
     "E-mail the ML platform team at ml-platform@example.com with the namespace, the number of GPUs and "
     "the expected duration."),
    ("What should a page about a GPU hardware fault include?",
     "For GPU hardware faults outside business hours, page the infrastructure on-call at +1 (206) "
     "555-0147. Include the node name, the XID error code from the DCGM exporter and the affected jobs.",
     "The node name, the XID error code reported by the DCGM exporter and the affected jobs; out of "
     "hours, page the infrastructure on-call at +1 (206) 555-0147."),
    ("How are GPU reservations billed?",
     "A user pasted billing details into a support chat: 'Please charge the GPU reservation to card "
     "4111 1111 1111 1111, expiry 12/28.' Support replied that reservations are billed to the team's "
     "AWS account, never to personal cards.",
     "They are billed to the team's AWS account, not to personal payment cards."),
    ("Why did curl to the vLLM canary's Pod IP on port 8000 return connection refused?",
     "kubectl get pod vllm-canary-5d8f -o wide showed the Pod IP 10.0.37.12, and curl to port 8000 on "
     "that IP returned connection refused while the readiness probe was still failing. The model "
     "finished loading four minutes later.",
     "The server was still loading the model, as the failing readiness probe showed; it accepted "
     "connections once loading finished four minutes later."),
    ("What fixed the HTTP 403 errors on MLflow artifact uploads?",
     "From: dara.novak@corp.example.net. The MLflow tracking server at 172.31.8.45 returned HTTP 403 for "
     "artifact uploads after the IAM role of the training service account was replaced. Re-creating the "
     "pod identity association for the service account fixed the uploads.",
     "Re-creating the EKS Pod Identity association for the training service account after its IAM role "
     "had been replaced."),
    ("Why did IPv4-only clients time out against the canary in the IPv6 EKS cluster?",
     "The canary endpoint resolved to 2600:1f14:0abc:1200:4b2e:09a1:7c3f:2d01 in an IPv6 cluster, and "
     "clients without IPv6 routes timed out. EKS IPv6 clusters give Pods IPv6 addresses only, so "
     "clients need IPv6 connectivity or a dual-stack load balancer in front of the service.",
     "Pods in an EKS IPv6 cluster get only IPv6 addresses, so clients without IPv6 routes need IPv6 "
     "connectivity or a dual-stack load balancer in front of the service."),
    ("What was done about the static AWS keys found in the training job manifest?",
     "A reviewer found static credentials in a training job manifest:\nenv:\n- name: AWS_ACCESS_KEY_ID\n"
     "  value: AKIAIOSFODNN7EXAMPLE\n- name: AWS_SECRET_ACCESS_KEY\n"
     "  value: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nThe keys were deactivated and the job switched "
     "to an IAM role through EKS Pod Identity.",
     "The keys were deactivated and the job was moved to an IAM role through EKS Pod Identity instead "
     "of static credentials."),
    ("How are EC2 Capacity Blocks for ML paid for?",
     "EC2 Capacity Blocks for ML reserve GPU instances such as p5.48xlarge for a future start date and a "
     "fixed duration. Order 1234567890123 confirmed a two-week block; a developer had also typed the "
     "card 5555-5555-5555-4444 into the procurement form, which was removed because Capacity Blocks are "
     "paid through the AWS account.",
     "Through the AWS account; they reserve GPU instances such as p5.48xlarge for a future start date "
     "and a fixed duration."),
]
PII_CHAT = [
    ("user", "Our vLLM endpoint is down, call me at 415-555-0199. How do I check if the pods are ready?"),
    ("assistant", "Run kubectl get pods -n llm-serving -l app=vllm and check the READY column; kubectl "
                  "describe pod shows failing readiness probes in its events."),
]
PII_INSTRUCTIONS: list[tuple[str, str, str]] = [
    ("Summarize this message in one sentence.",
     "Hi team, this is omar.haddad@example.org. The LoRA run for the support assistant finished with "
     "eval loss 1.31, beating the champion's 1.38, and RAGAS faithfulness stayed at 0.91. I propose "
     "promoting version 12 after the canary.",
     "The new LoRA model beat the champion on eval loss (1.31 vs 1.38) with unchanged faithfulness "
     "(0.91), and version 12 is proposed for promotion after a canary."),
    ("Explain what is wrong with this configuration.",
     "[default]\naws_access_key_id = AKIA2E0A8F3B244C9986\nregion = us-east-1",
     "It stores a long-lived IAM access key in a plain-text credentials file; on EKS, Pods should get "
     "temporary credentials from an IAM role through IRSA or EKS Pod Identity instead."),
]


def _qca(question: str, context: str, answer: str, as_list: bool = False, extra: str = "") -> dict:
    if as_list:
        return {"question": question, "contexts": [context, extra] if extra else [context], "answer": answer}
    return {"question": question, "context": context, "answer": answer}


def _chat(turns: list[tuple[str, str]]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def _line(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _tweak(obj: dict, path: tuple, old: str, new: str) -> dict:
    """A copy of `obj` with `old` replaced by `new` at `path` (keys/indexes): a near duplicate."""
    copy = json.loads(json.dumps(obj))
    if path == ("context",) and "contexts" in copy:
        path = ("contexts", 0)
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    assert old in parent[path[-1]], (path, old)
    parent[path[-1]] = parent[path[-1]].replace(old, new, 1)
    return copy


Plan = dict[str, list[tuple[str, object]]]


def _plan() -> Plan:
    """Every file as an ordered list of (label, payload); payload is JSON-able or raw bytes."""
    flat = [(q, ctx, a) for ctx, pairs in QA for q, a in pairs]
    assert len({q for q, _, _ in flat}) == len(flat), "questions must be unique"

    # Round-robin over the three days so each mixes topics; every 6th record uses the `contexts`
    # list, and every 12th also carries a neighbouring passage (retrieval noise).
    days: list[list[list]] = [[], [], []]
    rec: dict[str, dict] = {}  # question -> the rendered record, so duplicates are byte-identical
    day_of: dict[str, int] = {}
    for i, (q, ctx, a) in enumerate(flat):
        extra = flat[(i + 3) % len(flat)][1] if i % 12 == 11 else ""
        rec[q] = _qca(q, ctx, a, as_list=i % 6 == 5, extra=extra)
        day_of[q] = i % 3
        days[i % 3].append(["good", rec[q]])

    # Unicode noise a real export carries (BOM, non-breaking hyphen, no-break space, zero-width
    # space, full-width letters); cleaning must remove it, so these stay good records.
    for q, field, old, new in [
        ("What is the default backoffLimit of a Kubernetes Job?", "question", "What", "\ufeffWhat"),
        ("How does NCCL use EFA for multi-node training?", "answer", "OS-bypass", "OS\u2011bypass"),
        ("What does VPC CNI prefix delegation change?", "answer", "more Pods", "more\u00a0Pods"),
        ("Why are LoRA checkpoints small?", "question", "LoRA checkpoints", "LoRA\u200b checkpoints"),
        ("Which component replaces the webserver in Airflow 3?", "answer", "API server", "\uff21\uff30\uff29 server"),
    ]:
        assert old in rec[q][field], (q, old)
        rec[q][field] = rec[q][field].replace(old, new, 1)
        next(e for e in days[day_of[q]] if e[1] is rec[q])[0] = "unicode_noise"

    def dup(q: str) -> tuple[str, dict]:
        return "duplicate", rec[q]

    def near(q: str, field: str, old: str, new: str) -> tuple[str, dict]:
        return "near_duplicate", _tweak(rec[q], (field,), old, new)

    pii = {p[0]: ("pii", _qca(*p)) for p in PII_QA}
    day3 = days[2]
    # The Parquet file comes from another exporter: a plain string context in every row.
    parquet_rows = [(label, {"question": r["question"], "context": r.get("context") or r["contexts"][0],
                             "answer": r["answer"]}) for label, r in day3[:40]]
    files: Plan = {}

    # --- dt=2026-11-01 --------------------------------------------------------------------------
    files["dt=2026-11-01/rag_qa.jsonl"] = [tuple(e) for e in days[0]] + [
        pii.pop("How was the failed nightly data-prep run in ticket INC-4821 fixed?"),
        pii.pop("What should a page about a GPU hardware fault include?"),
        pii.pop("How are GPU reservations billed?"),
        dup("What do containers in the same Kubernetes Pod share?"),
        dup("How does a container request a GPU in Kubernetes?"),
        near("Which disruptions does a PodDisruptionBudget protect against?", "question",
             "Which disruptions does", "which disruptions does"),
        near("What does the NeMo distributed optimizer shard?", "answer", "ZeRO stage 1.", "ZeRO stage one."),
        ("malformed_json", b'{"question": "What is Karpenter consolidation?", "context": "Karpenter\'s '
                           b'disruption controller can consolidate a cluster to cut cost. With consol'),
        ("not_an_object", ["What is MIG?", "Multi-Instance GPU partitions a GPU into isolated instances."]),
        ("unknown_shape", {"text": "Karpenter is an open-source node provisioner for Kubernetes that "
                                   "launches right-sized EC2 instances for pending Pods."}),
        ("wrong_type", {"question": "How many GPUs does a p5.48xlarge have?",
                        "context": "p5.48xlarge instances have eight NVIDIA H100 GPUs.", "answer": 8}),
        ("empty_answer", {"question": "What does the DCGM exporter publish?",
                          "context": "NVIDIA DCGM exporter publishes GPU telemetry in Prometheus format.",
                          "answer": ""}),
        ("invalid_encoding", '{"question": "Qu\xe9 es Karpenter?", "context": "Karpenter aprovisiona '
                             'nodos para Pods pendientes.", "answer": "Un aprovisionador de nodos para '
                             'Kubernetes."}'.encode("latin-1")),
    ]
    alpaca = [{"instruction": i, "input": x, "output": o} for i, x, o in INSTRUCTIONS]
    files["dt=2026-11-01/alpaca.jsonl"] = [("good", r) for r in alpaca[:13]] + [
        ("pii", dict(zip(("instruction", "input", "output"), PII_INSTRUCTIONS[0], strict=True))),
        ("duplicate", alpaca[0]),
        ("near_duplicate", _tweak(alpaca[6], ("instruction",), "Write the vllm serve command",
                                  "Write the vLLM serve command")),
        ("empty_answer", {"instruction": "Explain what a Karpenter NodePool is.", "input": "",
                          "output": "   "}),
    ]

    # --- dt=2026-11-02 --------------------------------------------------------------------------
    files["dt=2026-11-02/rag_qa.jsonl"] = [tuple(e) for e in days[1]] + [
        pii.pop("How do I request access to the GPU experiment pool?"),
        pii.pop("Why did curl to the vLLM canary's Pod IP on port 8000 return connection refused?"),
        pii.pop("How are EC2 Capacity Blocks for ML paid for?"),
        # re-delivered from the day before: byte-identical lines across partitions
        dup("What do containers in the same Kubernetes Pod share?"),
        dup("How does the Kubernetes scheduler use resource requests?"),
        dup("How often does the HPA controller evaluate metrics by default?"),
        dup("Who operates etcd in an Amazon EKS cluster?"),  # and once more within this file
        near("What is the default value of catchup in Airflow 3?", "answer", "False;", "False -"),
        near("How does PagedAttention manage the KV cache?", "context", "vLLM's PagedAttention stores",
             "vLLM's  PagedAttention\nstores"),
        near("What does the RAGAS faithfulness metric measure?", "answer", "retrieved context.",
             "retrieved passages."),
        ("malformed_json", b'{"question": "What is a PodDisruptionBudget?", "answer": "A limit on '
                           b'voluntary disruptions.",}'),
        ("not_an_object", "Karpenter launches nodes directly through the EC2 Fleet API."),
        ("unknown_shape", {"q": "What is vLLM?", "a": "An inference engine for LLMs."}),
        ("wrong_type", {"question": "Which EC2 families have GPUs?",
                        "contexts": [5, 6], "answer": "For example p5, p4d, g6e and g5."}),
        ("empty_question", {"question": "  ", "context": "NeMo Curator prepares LLM training data.",
                            "answer": "It deduplicates, filters and redacts PII."}),
        # a UTF-8 em dash cut after two of its three bytes by a byte-oriented splitter
        ("invalid_encoding", b'{"question": "What is NeMo?", "answer": "NVIDIA\'s framework for LLM training '
                             b'\xe2\x80 and customization."}'),
    ]
    chats = [_chat(t) for t in CHATS]
    files["dt=2026-11-02/chat.jsonl"] = [("good", c) for c in chats] + [
        ("pii", _chat(PII_CHAT)),
        ("duplicate", chats[1]),
        ("near_duplicate", _tweak(chats[12], ("messages", 0, "content"), "What does", "what does")),
        ("wrong_type", {"messages": [{"role": "user", "content": "What is a DaemonSet?"},
                                     {"role": "assistant", "content": None}]}),
        ("empty_answer", {"messages": [{"role": "system", "content": SYS_EKS},
                                       {"role": "user", "content": "How do I drain a GPU node safely?"}]}),
    ]

    # --- dt=2026-11-03 --------------------------------------------------------------------------
    files["dt=2026-11-03/rag_qa.jsonl"] = [tuple(e) for e in day3[40:]] + [
        pii.pop("What fixed the HTTP 403 errors on MLflow artifact uploads?"),
        pii.pop("What was done about the static AWS keys found in the training job manifest?"),
        dup("Who operates etcd in an Amazon EKS cluster?"),  # from dt=2026-11-02
        dup("Why are Pods usually created through a controller instead of directly?"),
        near("Why should Airflow tasks be idempotent?", "question", "idempotent?", "idempotent"),
        near("What does .partial() do in dynamic task mapping?", "answer", "values that vary.",
             "values that differ."),
        ("malformed_json", b"{'question': 'What is MLflow?', 'answer': 'An open-source MLOps platform.'}"),
        ("not_an_object", 42),
        ("unknown_shape", {"title": "vLLM tuning", "body": "Raise --gpu-memory-utilization carefully."}),
        ("invalid_encoding", b'{"question": "What does \x93kubectl drain\x94 do?", "answer": "It cordons '
                             b'the node and evicts its Pods."}'),
    ]
    files["dt=2026-11-03/alpaca.jsonl"] = [("good", r) for r in alpaca[13:]] + [
        ("pii", dict(zip(("instruction", "input", "output"), PII_INSTRUCTIONS[1], strict=True))),
    ]
    completions = [{"prompt": p, "completion": c} for p, c in COMPLETIONS]
    files["dt=2026-11-03/completions.jsonl"] = [("good", c) for c in completions] + [
        ("duplicate", completions[15]),
        ("near_duplicate", _tweak(completions[4], ("completion",), "to a node by filtering",
                                  "to a node, by filtering")),
    ]
    files["dt=2026-11-03/rag_qa.parquet"] = parquet_rows + [
        pii.pop("Why did IPv4-only clients time out against the canary in the IPv6 EKS cluster?"),
        # the same record as a dt=2026-11-01 JSONL line, exported again by another tool
        dup("What is the difference between the NoSchedule and NoExecute taint effects?"),
        ("wrong_type", {"question": "What does Karpenter's expireAfter do?",
                        "context": "expireAfter replaces nodes after a maximum lifetime.", "answer": None}),
    ]
    assert not pii, f"PII records not placed: {list(pii)}"
    return files


def _shuffled(items: list, seed: str) -> list:
    """Defects spread through a file, not bunched at its end; the same order on every run."""
    items = list(items)
    random.Random(seed).shuffle(items)
    return items


def planned() -> Plan:
    """What `build` writes: file name -> (label, payload) in file order. Tests check each line's label."""
    return {name: _shuffled(items, name) for name, items in _plan().items()}


def build(out: Path = OUT) -> Counter:
    """Write every file under `out`; return counts per label and per file (README and tests use them)."""
    counts: Counter = Counter()
    for name, items in planned().items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        counts.update(label for label, _ in items)
        counts[f"file:{name}"] = len(items)
        if name.endswith(".parquet"):
            rows = [payload for _, payload in items]
            table = pa.table({k: pa.array([r[k] for r in rows], pa.string())
                              for k in ("question", "context", "answer")})
            pq.write_table(table, path, compression="zstd")
            continue
        with open(path, "wb") as f:
            for _, payload in items:
                f.write(payload + b"\n" if isinstance(payload, bytes) else _line(payload))
    return counts


if __name__ == "__main__":
    for key, value in sorted(build().items()):
        print(f"{key:48} {value}")

// Command manifests prints, as a JSON List, what virt-operator would install for virt-handler:
// KubeVirt's own PriorityClass, RBAC and DaemonSet, from KubeVirt's own generators, with the
// probe's images. Two changes for a cluster whose other nodes are simulated: the DaemonSet
// runs only on the nodes labelled NODE_LABEL=VALUE, and its selector has one more label, so
// that it does not adopt the node simulator's stand-in virt-handler pods. virt-handler gets
// KubeVirt's VIRT_IN_CONTAINER=true (for Kubernetes itself in a container, as here): it enters
// its parent's mount namespace instead of PID 1's, which this machine does not let it open.
//
//	manifests NAMESPACE HANDLER_IMAGE LAUNCHER_IMAGE NODE_LABEL VALUE
package main

import (
	"encoding/json"
	"os"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/rbac"
)

const probeLabel = "vps.org/kubevirt-node-probe"

func main() {
	namespace, handler, launcher, nodeLabel, nodeValue := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	objects := []runtime.Object{components.NewKubeVirtPriorityClassCR()}
	objects = append(objects, rbac.GetAllHandler(namespace)...)
	ds := components.NewHandlerDaemonSet(namespace, "localhost", "", "v1.7.0", "v1.7.0", "", "", "", "", "",
		handler, launcher, "", "", corev1.PullNever, nil, nil, "2", map[string]string{"VIRT_IN_CONTAINER": "true"}, false)
	ds.Spec.Selector.MatchLabels[probeLabel] = "true"
	ds.Spec.Template.Labels[probeLabel] = "true"
	ds.Spec.Template.Spec.NodeSelector = map[string]string{nodeLabel: nodeValue}
	objects = append(objects, ds)
	out := map[string]interface{}{"apiVersion": "v1", "kind": "List", "items": objects}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		os.Stderr.WriteString("manifests: " + err.Error() + "\n")
		os.Exit(1)
	}
}

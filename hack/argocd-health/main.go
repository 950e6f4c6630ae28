// Command argocd-health evaluates Argo CD resource health exactly as the Argo CD application
// controller does, so tuneforge's health checks are tested by Argo CD's own code rather than
// by another Lua runtime.
//
// It reads the resource customizations from the argocd-cm ConfigMap on a real API server
// through Argo CD's SettingsManager (the same keys, labels and parsing the controller uses),
// then, for each Kubernetes object read as one JSON document per line on stdin, prints one
// JSON line with the health gitops-engine's GetResourceHealth gives it under those overrides:
// {"status": ..., "message": ...}, or {"error": ...} when the evaluation fails. An object no
// customization and no built-in check covers prints {"status": ""}.
//
// Built by hack/provision-argocd-health.sh; test tooling only, never shipped.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"

	"github.com/argoproj/argo-cd/gitops-engine/v3/pkg/health"
	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

type result struct {
	Status  health.HealthStatusCode `json:"status"`
	Message string                  `json:"message,omitempty"`
	Error   string                  `json:"error,omitempty"`
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server holding argocd-cm")
	namespace := flag.String("namespace", "argocd", "namespace of argocd-cm")
	listOverrides := flag.Bool("list-overrides", false, "print the group/kinds that have a health script and exit")
	flag.Parse()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail("kubeconfig: %v", err)
	}
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		fail("client: %v", err)
	}
	manager := settings.NewSettingsManager(context.Background(), clientset, *namespace)
	overrides, err := manager.GetResourceOverrides()
	if err != nil {
		fail("resource overrides from argocd-cm: %v", err)
	}

	if *listOverrides {
		keys := []string{}
		for key, override := range overrides {
			if override.HealthLua != "" {
				keys = append(keys, key)
			}
		}
		sort.Strings(keys)
		emit(keys)
		return
	}

	healthOverrides := lua.ResourceHealthOverrides(overrides)
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 16<<20)
	for scanner.Scan() {
		emit(evaluate(scanner.Bytes(), healthOverrides))
	}
	if err := scanner.Err(); err != nil {
		fail("stdin: %v", err)
	}
}

func evaluate(document []byte, overrides health.HealthOverride) result {
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(document); err != nil {
		return result{Error: fmt.Sprintf("object: %v", err)}
	}
	status, err := health.GetResourceHealth(&obj, overrides)
	if err != nil {
		return result{Error: err.Error()}
	}
	if status == nil {
		return result{}
	}
	return result{Status: status.Status, Message: status.Message}
}

func emit(value any) {
	line, err := json.Marshal(value)
	if err != nil {
		fail("encode: %v", err)
	}
	fmt.Println(string(line))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "argocd-health: "+format+"\n", args...)
	os.Exit(2)
}

// Command kube is a multi-call binary holding the local Kubernetes control plane used by
// pgshard's end-to-end tests: kube-apiserver, kube-controller-manager, kube-scheduler,
// kubectl and etcd. Linking them into one binary shares compilation and linking of the
// large common dependency graph, which is what makes the cold build fit in CI.
//
// It dispatches on the name it was called by (a symlink named kubectl, etcd, ...) or,
// failing that, on its first argument: `kube kube-apiserver --help`.
// Built by scripts/kube-build; never committed as a binary.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// tools maps each program name to a function running it with os.Args already shifted
// so that os.Args[0] is the program name; each returns the process exit code.
var tools = map[string]func() int{
	"kube-apiserver":          func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"kube-scheduler":          func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kubectl":                 func() int { return runKubectl(kubectl.NewDefaultKubectlCommand()) },
	"etcd":                    func() int { etcdmain.Main(os.Args); return 0 },
}

func runKubectl(command *cobra.Command) int {
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err) // prints the error as kubectl does and exits non-zero
	}
	return 0
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := tools[name]; !ok && len(os.Args) > 1 {
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := tools[name]
	if !ok {
		names := make([]string, 0, len(tools))
		for n := range tools {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: kube PROGRAM [ARGS...] or call through a symlink named PROGRAM; PROGRAM is one of %v\n", names)
		os.Exit(2)
	}
	os.Exit(run())
}

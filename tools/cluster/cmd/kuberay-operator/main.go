// Command kuberay-operator runs KubeRay's RayCluster, RayJob and RayService controllers at the pinned release.
//
// KubeRay's own main.go is package main of the ray-operator module and cannot be imported, so this is its
// setup (ray-operator/main.go, v1.5.0) without the log-file, batch-scheduler, metrics and webhook options:
// the same scheme, the same Job cache selector and the same reconcilers with their default configuration.
package main

import (
	"flag"
	"os"

	routev1 "github.com/openshift/api/route/v1"
	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/selection"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	k8szap "sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	configapi "github.com/ray-project/kuberay/ray-operator/apis/config/v1alpha1"
	rayv1 "github.com/ray-project/kuberay/ray-operator/apis/ray/v1"
	"github.com/ray-project/kuberay/ray-operator/controllers/ray"
	"github.com/ray-project/kuberay/ray-operator/controllers/ray/batchscheduler"
	"github.com/ray-project/kuberay/ray-operator/controllers/ray/utils"
)

var (
	scheme   = runtime.NewScheme()
	setupLog = ctrl.Log.WithName("setup")
)

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(rayv1.AddToScheme(scheme))
	utilruntime.Must(routev1.Install(scheme))
	utilruntime.Must(batchv1.AddToScheme(scheme))
	utilruntime.Must(configapi.AddToScheme(scheme))
}

func main() {
	var metricsAddr, probeAddr string
	flag.StringVar(&metricsAddr, "metrics-addr", "0", "The address the metric endpoint binds to (0 = off).")
	flag.StringVar(&probeAddr, "health-probe-bind-address", "127.0.0.1:0", "The address the probe endpoint binds to.")
	opts := k8szap.Options{Development: true}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()

	logger := k8szap.New(k8szap.UseFlagOptions(&opts))
	ctrl.SetLogger(logger)
	klog.SetLogger(logger)

	leaderElection := false
	qps := float64(configapi.DefaultQPS)
	burst := configapi.DefaultBurst
	config := configapi.Configuration{
		MetricsAddr:          metricsAddr,
		ProbeAddr:            probeAddr,
		EnableLeaderElection: &leaderElection,
		ReconcileConcurrency: configapi.DefaultReconcileConcurrency,
		QPS:                  &qps,
		Burst:                &burst,
	}

	// KubeRay only watches the batch Jobs it created; same selector as upstream.
	created, err := labels.NewRequirement(utils.KubernetesCreatedByLabelKey, selection.Equals, []string{utils.ComponentName})
	exitOnError(err, "unable to create cache selectors")
	options := ctrl.Options{
		Scheme: scheme,
		Cache: cache.Options{
			ByObject: map[client.Object]cache.ByObject{&batchv1.Job{}: {Label: labels.NewSelector().Add(*created)}},
		},
		Metrics:                metricsserver.Options{BindAddress: config.MetricsAddr},
		HealthProbeBindAddress: config.ProbeAddr,
	}

	restConfig := ctrl.GetConfigOrDie()
	restConfig.UserAgent = "kuberay-operator/" + utils.KUBERAY_VERSION
	restConfig.QPS = float32(qps)
	restConfig.Burst = burst
	mgr, err := ctrl.NewManager(restConfig, options)
	exitOnError(err, "unable to start manager")
	ctx := ctrl.SetupSignalHandler()

	schedulers, err := batchscheduler.NewSchedulerManager(ctx, config, restConfig, mgr.GetClient())
	exitOnError(err, "unable to create batch scheduler manager")
	schedulers.AddToScheme(mgr.GetScheme())

	clusterOptions := ray.RayClusterReconcilerOptions{
		IsOpenShift:           utils.GetClusterType(),
		BatchSchedulerManager: schedulers,
	}
	exitOnError(ray.NewReconciler(ctx, mgr, clusterOptions).SetupWithManager(mgr, config.ReconcileConcurrency),
		"unable to create controller", "controller", "RayCluster")
	exitOnError(ray.NewRayServiceReconciler(ctx, mgr, config).SetupWithManager(mgr, config.ReconcileConcurrency),
		"unable to create controller", "controller", "RayService")
	jobOptions := ray.RayJobReconcilerOptions{BatchSchedulerManager: schedulers}
	exitOnError(ray.NewRayJobReconciler(ctx, mgr, jobOptions, config).SetupWithManager(mgr, config.ReconcileConcurrency),
		"unable to create controller", "controller", "RayJob")
	exitOnError(mgr.AddHealthzCheck("healthz", healthz.Ping), "unable to set up health check")
	exitOnError(mgr.AddReadyzCheck("readyz", healthz.Ping), "unable to set up ready check")

	setupLog.Info("starting manager", "version", utils.KUBERAY_VERSION)
	exitOnError(mgr.Start(ctx), "problem running manager")
}

func exitOnError(err error, msg string, keysAndValues ...interface{}) {
	if err != nil {
		setupLog.Error(err, msg, keysAndValues...)
		os.Exit(1)
	}
}

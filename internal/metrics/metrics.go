// Package metrics exposes Lifeboat's Prometheus metrics: one registry per
// process (never the global one, so that tests can run several roles in
// one process), with collectors that read the roles' Status and counters
// at scrape time, and an HTTP listener serving /metrics.
//
// Every name starts with lifeboat_ and is listed, with its labels and the
// role that exposes it, in the Metrics section of the README; the e2e
// tests check the two against each other.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry returns a registry with the Go runtime and process
// collectors, lifeboat_build_info and the given collectors.
func NewRegistry(version string, cs ...prometheus.Collector) (*prometheus.Registry, error) {
	r := prometheus.NewRegistry()
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "lifeboat_build_info",
		Help: "Always 1; the version label is the build version of this binary.", ConstLabels: prometheus.Labels{"version": version}})
	build.Set(1)
	cs = append([]prometheus.Collector{collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), build}, cs...)
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// desc builds a metric's description; its variable labels come first,
// in the order the collectors pass their values.
func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

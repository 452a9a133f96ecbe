package main

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"lifeboat/internal/metrics"
	"lifeboat/pipeline"
)

// metricsFlag is --metrics-listen, of every long-running role.
func metricsFlag() cli.Flag {
	return &cli.StringFlag{Name: "metrics-listen",
		Usage: "`ADDR` (HOST:PORT) to serve Prometheus metrics on, plain HTTP at /metrics; \"\" (the default) serves none.\n" +
			"\tThey name volumes and machines and have no authentication: prefer 127.0.0.1"}
}

// startMetrics serves the role's collector, the Go runtime's and the
// process's at --metrics-listen ADDR, when it is set; the returned function
// stops it.
func startMetrics(out io.Writer, addr string, c ...prometheus.Collector) (func(), error) {
	if addr == "" {
		return func() {}, nil
	}
	reg, err := metrics.NewRegistry(version, c...)
	if err != nil {
		return nil, err
	}
	e, err := metrics.Listen(addr, reg, slog.Default())
	if err != nil {
		return nil, usageError("--metrics-listen %s: %v", addr, err)
	}
	fmt.Fprintf(out, "metrics at http://%s/metrics\n", e.Addr())
	return func() { e.Close() }, nil
}

// startMetrics serves the agent's metrics: every volume, and its shipper
// when it is replicated.
func (a *agent) startMetrics(out io.Writer, addr string) (func(), error) {
	c := &metrics.AgentCollector{}
	for i, v := range a.vols {
		av := metrics.AgentVolume{Name: a.specs[i].Name, Volume: v}
		if i < len(a.shippers) {
			av.Shipper = a.shippers[i]
		}
		c.Volumes = append(c.Volumes, av)
	}
	return startMetrics(out, addr, c)
}

// serverMetrics is the collector of a process server (lifeboat server,
// process-server, master-target).
func serverMetrics(s *pipeline.Server) prometheus.Collector {
	return &metrics.ServerCollector{Server: s}
}

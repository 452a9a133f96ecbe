package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"lifeboat/pipeline"
)

// ServerCollector reads a process server at scrape time (Server.Metrics:
// its status, with the points of every replica, and its counters).
type ServerCollector struct {
	Server *pipeline.Server
}

var _ prometheus.Collector = (*ServerCollector)(nil)

var (
	serverReceived = desc("lifeboat_server_received_bytes_total",
		"Segment bytes received and stored (spooled, or applied directly during the initial replication), since the server started.",
		"machine", "volume")
	serverApplied = desc("lifeboat_server_applied_bytes_total",
		"Bytes of data applied to the replica, since the server started.", "machine", "volume")
	serverLag = desc("lifeboat_server_apply_lag_seconds",
		"How long the oldest segment waiting in the spool has waited; 0 when none waits.", "machine", "volume")
	serverPoints = desc("lifeboat_server_recovery_points",
		"Recovery points the replica holds.", "machine", "volume")
	serverLatest = desc("lifeboat_server_latest_point_timestamp_seconds",
		"Time of the newest recovery point (Unix seconds); absent before the first.", "machine", "volume")
	serverFailed = desc("lifeboat_server_volume_failed",
		"1 while the replica cannot be opened or its last apply failed, else 0.", "machine", "volume")
	serverSpool = desc("lifeboat_server_spool_bytes",
		"Bytes in the spool, waiting to be applied (every volume).")
	serverQuota = desc("lifeboat_server_spool_quota_bytes",
		"The spool quota (--spool-quota).")
	serverErrors = desc("lifeboat_server_errors_total",
		"Refused segments and requests and failed applies, by kind, since the server started.", "kind")
)

// Describe sends every metric the collector may send.
func (c *ServerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{serverReceived, serverApplied, serverLag, serverPoints, serverLatest,
		serverFailed, serverSpool, serverQuota, serverErrors} {
		ch <- d
	}
}

// Collect reads the server's metrics.
func (c *ServerCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.Server.Metrics()
	ch <- prometheus.MustNewConstMetric(serverSpool, prometheus.GaugeValue, float64(m.SpoolBytes))
	ch <- prometheus.MustNewConstMetric(serverQuota, prometheus.GaugeValue, float64(m.SpoolQuota))
	for _, k := range pipeline.ErrorKinds {
		ch <- prometheus.MustNewConstMetric(serverErrors, prometheus.CounterValue, float64(m.Errors[k]), k)
	}
	for _, v := range m.Volumes {
		labels := []string{v.Info.Machine, v.Info.Name}
		send := func(d *prometheus.Desc, t prometheus.ValueType, x float64) {
			ch <- prometheus.MustNewConstMetric(d, t, x, labels...)
		}
		send(serverReceived, prometheus.CounterValue, float64(v.ReceivedBytes))
		send(serverApplied, prometheus.CounterValue, float64(v.AppliedBytes))
		send(serverLag, prometheus.GaugeValue, v.ApplyLag.Seconds())
		send(serverPoints, prometheus.GaugeValue, float64(v.Points))
		send(serverFailed, prometheus.GaugeValue, boolValue(v.Failed != "" || v.ApplyError != ""))
		if p := v.LatestPoint; p != nil {
			send(serverLatest, prometheus.GaugeValue, float64(p.Time.UnixNano())/1e9)
		}
	}
}

package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"lifeboat/control"
)

// ControlCollector reads the configuration server's view of the site at
// scrape time (control.Server.Evaluate: what `lifeboat status` shows).
// Per-item numbers are the agents' and process servers' own metrics; these
// are the site's totals, for one alert on the whole site.
type ControlCollector struct {
	Control *control.Server
}

var _ prometheus.Collector = (*ControlCollector)(nil)

var (
	controlItems = desc("lifeboat_control_items",
		"Protected items by health (Healthy, Warning, Critical).", "health")
	controlEvents = desc("lifeboat_control_events_open",
		"Events raised and not cleared, by severity.", "severity")
	controlPS = desc("lifeboat_control_process_servers_up",
		"Process servers (the site's own and the registered ones) that sent a heartbeat within --heartbeat-timeout.")
)

// Describe sends every metric the collector may send.
func (c *ControlCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{controlItems, controlEvents, controlPS} {
		ch <- d
	}
}

// Collect evaluates the site.
func (c *ControlCollector) Collect(ch chan<- prometheus.Metric) {
	st, _, err := c.Control.Evaluate()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(controlItems, err)
		return
	}
	byHealth := map[control.Health]int{control.Healthy: 0, control.Warning: 0, control.Critical: 0}
	for _, it := range st.Items {
		byHealth[it.Health]++
	}
	for h, n := range byHealth {
		ch <- prometheus.MustNewConstMetric(controlItems, prometheus.GaugeValue, float64(n), string(h))
	}
	up := 0
	for _, ps := range st.ProcessServers {
		if ps.Health != control.Critical {
			up++
		}
	}
	ch <- prometheus.MustNewConstMetric(controlPS, prometheus.GaugeValue, float64(up))
	open := map[control.Health]int{control.Warning: 0, control.Critical: 0}
	if es, err := c.Control.OpenEvents(); err == nil {
		for _, e := range es {
			open[e.Severity]++
		}
	}
	for sev, n := range open {
		ch <- prometheus.MustNewConstMetric(controlEvents, prometheus.GaugeValue, float64(n), string(sev))
	}
}

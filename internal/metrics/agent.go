package metrics

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"

	"lifeboat/pipeline"
	"lifeboat/tracker"
)

// AgentVolume is one volume an agent protects.
type AgentVolume struct {
	Name    string
	Volume  *tracker.Volume
	Shipper *pipeline.Shipper // nil when the agent only journals (no --server)
}

// AgentCollector reads an agent's volumes and shippers at scrape time.
// Volumes must not change after it is registered.
type AgentCollector struct {
	Volumes []AgentVolume
	// Current, if set, replaces Volumes: it is called at each scrape, for
	// an agent whose volumes change while it runs (a managed agent).
	Current func() []AgentVolume
}

var _ prometheus.Collector = (*AgentCollector)(nil)

var (
	agentWritten = desc("lifeboat_agent_written_bytes_total",
		"Bytes of data written to the volume (churn), since the agent started.", "volume")
	agentZeroed = desc("lifeboat_agent_zeroed_bytes_total",
		"Bytes zeroed or discarded (write-zeroes, trim) on the volume, since the agent started.", "volume")
	agentJournal = desc("lifeboat_agent_journal_bytes",
		"Journal not yet acknowledged by the process server (sealed and open segments).", "volume")
	agentQuota = desc("lifeboat_agent_journal_quota_bytes",
		"The volume's journal quota (--journal-quota); 0 for none.", "volume")
	agentDirty = desc("lifeboat_agent_dirty_bytes",
		"Bytes of the regions marked dirty in the volume's bitmap.", "volume")
	agentBitmap = desc("lifeboat_agent_bitmap_mode",
		"1 while the volume is tracked in bitmap mode (journaling suspended), else 0.", "volume")
	agentShipped = desc("lifeboat_agent_shipped_bytes_total",
		"Segment bytes the process server acknowledged, before compression, since the agent started.", "volume")
	agentWire = desc("lifeboat_agent_shipped_wire_bytes_total",
		"Segment bytes the process server acknowledged, as sent on the wire (compressed), since the agent started.", "volume")
	agentSegments = desc("lifeboat_agent_shipped_segments_total",
		"Segments the process server acknowledged, since the agent started.", "volume")
	agentRate = desc("lifeboat_agent_upload_bytes_per_second",
		"Wire bytes acknowledged per second, averaged over the last 10 seconds.", "volume")
	agentRPO = desc("lifeboat_agent_rpo_seconds",
		"Age of the newest recovery point the server has while the volume has changed since (0 when it has not); +Inf before the first point.", "volume")
	agentConnected = desc("lifeboat_agent_connected",
		"1 while the last exchange with the process server succeeded, else 0.", "volume")
	agentResync = desc("lifeboat_agent_resync_remaining_bytes",
		"Bytes the running resync or initial replication has still to copy; 0 when none runs.", "volume")
	agentErrors = desc("lifeboat_agent_errors_total",
		"Failed or refused attempts to ship, by kind, since the agent started.", "volume", "kind")
)

// Describe sends every metric the collector may send.
func (c *AgentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{agentWritten, agentZeroed, agentJournal, agentQuota, agentDirty, agentBitmap,
		agentShipped, agentWire, agentSegments, agentRate, agentRPO, agentConnected, agentResync, agentErrors} {
		ch <- d
	}
}

// Collect reads every volume's status.
func (c *AgentCollector) Collect(ch chan<- prometheus.Metric) {
	vols := c.Volumes
	if c.Current != nil {
		vols = c.Current()
	}
	for _, v := range vols {
		var ts tracker.Status
		var ss pipeline.ShipperStatus
		if v.Shipper != nil {
			ss = v.Shipper.Status() // with the tracker's
			ts = ss.Tracker
		} else {
			ts = v.Volume.Status()
		}
		churn := v.Volume.Churn()
		counter := func(d *prometheus.Desc, n int64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n), v.Name)
		}
		gauge := func(d *prometheus.Desc, x float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, v.Name)
		}
		counter(agentWritten, churn.WrittenBytes)
		counter(agentZeroed, churn.ZeroedBytes)
		gauge(agentJournal, float64(ts.JournalBytes))
		gauge(agentQuota, float64(ts.JournalQuota))
		gauge(agentDirty, float64(ts.DirtyRegions*ts.RegionSize))
		gauge(agentBitmap, boolValue(ts.Mode == tracker.ModeBitmap))
		if v.Shipper == nil {
			continue
		}
		counter(agentShipped, ss.BytesRaw)
		counter(agentWire, ss.BytesWire)
		counter(agentSegments, ss.SegmentsSent)
		gauge(agentRate, v.Shipper.UploadRate())
		rpo := math.Inf(1)
		if ss.RPOSeconds != nil {
			rpo = *ss.RPOSeconds
		}
		gauge(agentRPO, rpo)
		gauge(agentConnected, boolValue(ss.Connected))
		var left int64
		if p := ss.Resync; p != nil && p.Phase == pipeline.PhaseCopying {
			left = max(p.Total-p.Done, 0)
		}
		gauge(agentResync, float64(left))
		errs := v.Shipper.Errors()
		for _, k := range pipeline.ErrorKinds {
			ch <- prometheus.MustNewConstMetric(agentErrors, prometheus.CounterValue, float64(errs[k]), v.Name, k)
		}
	}
}

package pipeline

import (
	"errors"
	"net"
	"sync/atomic"
	"time"
)

// Counters for metrics (package internal/metrics reads them at scrape
// time). They cost an atomic add where an error or a segment is handled;
// the rest of what metrics show is read from Status.

// Error kinds, as metrics label them. The agent counts every failed or
// refused attempt to ship; the server every segment or request it refuses
// and every failed apply.
const (
	KindChecksum     = "checksum"       // a segment failed its checksum on the way
	KindGap          = "gap"            // a segment did not continue the replica (409)
	KindForbidden    = "forbidden"      // a certificate refused for a volume or a request
	KindBadAck       = "bad_ack"        // an answer that does not match the agent's journal
	KindFailedOver   = "failed_over"    // the volume is failed over at the site
	KindThrottled    = "throttled"      // the spool is nearly full, or receive memory in use (503)
	KindSiteDiskFull = "site_disk_full" // a disk of the site is nearly full (503)
	KindStalled      = "stalled"        // an upload made no progress and was cut
	KindNetwork      = "network"        // the connection failed
	KindSpool        = "spool"          // writing the spool failed
	KindApply        = "apply"          // applying a segment to the target failed
	KindOther        = "other"
)

var errorKinds = [...]string{KindChecksum, KindGap, KindForbidden, KindBadAck, KindFailedOver, KindThrottled,
	KindSiteDiskFull, KindStalled, KindNetwork, KindSpool, KindApply, KindOther}

// ErrorKinds lists every kind, in a fixed order.
var ErrorKinds = errorKinds[:]

// errorKind is the kind of an error of this package.
func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, ErrChecksum):
		return KindChecksum
	case errors.Is(err, ErrGap):
		return KindGap
	case errors.Is(err, ErrForbidden):
		return KindForbidden
	case errors.Is(err, ErrBadAck):
		return KindBadAck
	case errors.Is(err, ErrFailedOver):
		return KindFailedOver
	case errors.Is(err, ErrSiteDiskFull):
		return KindSiteDiskFull
	case errors.Is(err, ErrSlowDown):
		return KindThrottled
	case errors.Is(err, ErrStalled):
		return KindStalled
	case errors.As(err, &ne):
		return KindNetwork
	}
	return KindOther
}

// errorCounts counts errors by kind, without a lock.
type errorCounts struct {
	n [len(errorKinds)]atomic.Int64 // indexed like ErrorKinds
}

func (c *errorCounts) add(kind string) {
	for i, k := range ErrorKinds {
		if k == kind {
			c.n[i].Add(1)
			return
		}
	}
	c.n[len(ErrorKinds)-1].Add(1)
}

func (c *errorCounts) addErr(err error) { c.add(errorKind(err)) }

// snapshot returns every kind's count, zeros included.
func (c *errorCounts) snapshot() map[string]int64 {
	m := make(map[string]int64, len(ErrorKinds))
	for i, k := range ErrorKinds {
		m[k] = c.n[i].Load()
	}
	return m
}

// rateMeter is a moving average of bytes per second over the last
// rateWindow seconds, in one-second buckets. Not safe for concurrent use.
type rateMeter struct {
	sec   [rateWindow]int64 // the unix second each bucket holds
	bytes [rateWindow]int64
}

const rateWindow = 10

func (r *rateMeter) add(now time.Time, n int64) {
	s := now.Unix()
	i := s % rateWindow
	if r.sec[i] != s {
		r.sec[i], r.bytes[i] = s, 0
	}
	r.bytes[i] += n
}

// rate is the average over the window that ends now.
func (r *rateMeter) rate(now time.Time) float64 {
	s := now.Unix()
	var sum int64
	for i := range rateWindow {
		if r.sec[i] > s-rateWindow && r.sec[i] <= s {
			sum += r.bytes[i]
		}
	}
	return float64(sum) / rateWindow
}

// Errors returns how many attempts to ship failed or were refused, by
// kind (every kind of ErrorKinds, zeros included), since Run started.
func (s *Shipper) Errors() map[string]int64 { return s.errs.snapshot() }

// UploadRate is the segment bytes on the wire (after compression) per
// second, averaged over the last 10 seconds.
func (s *Shipper) UploadRate() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upload.rate(time.Now())
}

// ServerMetrics is what the process server's metrics show beyond Status.
type ServerMetrics struct {
	SpoolBytes int64 // in the spool now, every volume
	SpoolQuota int64
	Errors     map[string]int64 // by kind, every kind of ErrorKinds
	Volumes    []VolumeMetrics
}

// VolumeMetrics is a volume's status with its counters.
type VolumeMetrics struct {
	VolumeStatus
	ReceivedBytes int64 // segment bytes received and stored (spooled or applied directly) since Open
	AppliedBytes  int64 // data bytes applied to the replica since Open
	// ApplyLag is how long the oldest segment waiting in the spool has
	// been there (since it was received, or since Open for one found in
	// the spool); 0 when none waits.
	ApplyLag time.Duration
}

// Metrics returns the server's status and counters.
func (s *Server) Metrics() ServerMetrics {
	m := ServerMetrics{SpoolBytes: s.spoolUsed.Load(), SpoolQuota: s.SpoolQuota, Errors: s.errs.snapshot()}
	now := time.Now()
	for _, st := range s.Status() {
		vm := VolumeMetrics{VolumeStatus: st}
		if v := s.volume(st.Info.ID); v != nil {
			vm.ReceivedBytes, vm.AppliedBytes = v.received.Load(), v.appliedBytes.Load()
			v.mu.Lock()
			if len(v.pending) > 0 && !v.pending[0].spooledAt.IsZero() {
				vm.ApplyLag = max(now.Sub(v.pending[0].spooledAt), 0)
			}
			v.mu.Unlock()
		}
		m.Volumes = append(m.Volumes, vm)
	}
	return m
}

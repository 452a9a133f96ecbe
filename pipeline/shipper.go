package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"lifeboat/hrl"
	"lifeboat/tracker"
)

// Shipper is the agent side of the pipeline for one volume: it streams
// sealed segments in seq order to the process server and acknowledges them
// to the tracker once the server has them durably, runs the initial
// replication and every resync the tracker asks for, and takes a
// crash-consistent tag every TagInterval. Set the exported fields after
// NewShipper and before Run.
type Shipper struct {
	Volume *tracker.Volume
	Name   string       // the volume's name at the recovery site
	URL    string       // the process server, https://HOST:PORT
	Client *http.Client // with the agent's client certificate (pki.ClientTLS)
	// Compression is the zstd level; zstd.SpeedFastest by default. 0 sends
	// segments uncompressed.
	Compression zstd.EncoderLevel
	TagInterval time.Duration // crash-consistent tags; 0 disables, at least MinTagInterval
	MaxBackoff  time.Duration
	// PollInterval is how often the shipper asks the site for requests
	// (a planned failover) while it has nothing to send; default
	// DefaultPollInterval.
	PollInterval time.Duration
	// InFlight is how many segments the shipper sends at once, in order,
	// when the server takes that many (VolumeStatus.SegmentsInFlight):
	// the next segment's upload overlaps with the server storing the one
	// before. Default DefaultInFlight; 1 sends one at a time.
	InFlight int
	// BaseSeq is the seq up to which the server may lack this journal: a
	// reprotect dropped it unshipped, because the replica (the primary
	// disk) gets what it changed from the resync that follows. A server
	// behind an acknowledged seq up to BaseSeq is then not taken for a
	// new or restored replica (no full resync).
	BaseSeq uint64
	Logger  *slog.Logger

	mu      sync.Mutex
	status  ShipperStatus
	lanes   chan *lane // one per segment in flight
	depth   int        // segments in flight now: InFlight, or what the server takes
	lastTag uint64
	// tags are the tags taken and not yet acknowledged, oldest first: a
	// segment acknowledged may carry an older tag than the newest one
	// (segments in flight on a slow link), and the RPO is the age of the
	// newest tag the server has.
	tags     []tagAt
	lastPoll time.Time // the sender loop's last poll of the site
	upload   rateMeter // wire bytes acknowledged (metrics.go)

	errs errorCounts // failed attempts by kind (metrics.go)
}

// ShipperStatus is what an admin sees of a volume's replication.
type ShipperStatus struct {
	Volume    string `json:"volume"`
	Server    string `json:"server"`
	Connected bool   `json:"connected"`
	LastError string `json:"last_error,omitempty"`
	// Stopped says why the site refuses this volume (another machine's
	// volume there, an answer that does not match this journal): nothing
	// is shipped until that is fixed; the journal is kept.
	Stopped      string    `json:"stopped,omitempty"`
	LastAck      time.Time `json:"last_ack,omitzero"`
	AckedSeq     uint64    `json:"acked_seq"`
	SegmentsSent int64     `json:"segments_sent"`
	BytesRaw     int64     `json:"bytes_raw"`  // segment bytes shipped
	BytesWire    int64     `json:"bytes_wire"` // after compression
	Resends      int64     `json:"resends"`
	LastTagSeq   uint64    `json:"last_tag_seq"`
	LastTagAcked time.Time `json:"last_tag_acked,omitzero"` // time of the newest tag the server has
	// RPOSeconds is how old the newest recovery point the server has is
	// while the volume has changed since (0 when it has not); nil before
	// the first point, when no point exists to recover to.
	RPOSeconds *float64       `json:"rpo_seconds"`
	Resync     *Progress      `json:"resync,omitempty"`
	Tracker    tracker.Status `json:"tracker"`

	// SiteDiskFull is the site's answer while it refuses segments because
	// its disk is full (the journal waits here meanwhile); "" otherwise.
	SiteDiskFull string `json:"site_disk_full,omitempty"`
}

// Progress of a resync or initial replication. It lasts until the point
// that ends it is on the server: Phase is PhaseCopying while the dirty
// regions are read into the journal (Done of Total dirty bytes; holes
// count as done without being read), then PhaseShipping until the server
// acknowledges the tag at PointSeq.
type Progress struct {
	Reason     string    `json:"reason"`
	Phase      string    `json:"phase"`
	Started    time.Time `json:"started"`
	Done       int64     `json:"done"`
	Total      int64     `json:"total"`
	RateBps    float64   `json:"rate_bytes_per_second"`
	ETASeconds float64   `json:"eta_seconds"`
	PointSeq   uint64    `json:"point_seq,omitempty"`
}

// Phases of a Progress.
const (
	PhaseCopying  = "copying"
	PhaseShipping = "shipping"
)

// NewShipper returns a Shipper with default settings.
func NewShipper(v *tracker.Volume, name, url string, client *http.Client) *Shipper {
	return &Shipper{Volume: v, Name: name, URL: url, Client: client, Compression: zstd.SpeedFastest,
		TagInterval: DefaultTagInterval, MaxBackoff: DefaultMaxBackoff}
}

func (s *Shipper) logger() *slog.Logger {
	l := s.Logger
	if l == nil {
		l = slog.Default()
	}
	return l.With("volume", s.Name)
}

// Status returns the current replication status.
func (s *Shipper) Status() ShipperStatus {
	ts := s.Volume.Status()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Volume, st.Server, st.Tracker = s.Name, s.URL, ts
	if st.Resync != nil {
		p := *st.Resync
		st.Resync = &p
	}
	if !st.LastTagAcked.IsZero() {
		rpo := 0.0
		if ts.NextSeq > st.LastTagSeq+1 {
			rpo = time.Since(st.LastTagAcked).Seconds()
		}
		st.RPOSeconds = &rpo
	}
	return st
}

// Run ships until ctx ends. It returns nil then, or a configuration error.
func (s *Shipper) Run(ctx context.Context) error {
	if s.Volume == nil || s.Client == nil || s.URL == "" || s.Name == "" {
		return errors.New("shipper: volume, name, server URL and HTTP client are required")
	}
	if s.TagInterval != 0 && s.TagInterval < MinTagInterval {
		return fmt.Errorf("shipper: tag interval %v is below the minimum %v", s.TagInterval, MinTagInterval)
	}
	n := s.InFlight
	if n <= 0 {
		n = DefaultInFlight
	}
	s.lanes = make(chan *lane, n)
	for range n {
		l := &lane{}
		if s.Compression != 0 {
			enc, err := newEncoder(s.Compression)
			if err != nil {
				return fmt.Errorf("shipper: %w", err)
			}
			l.enc = enc
			defer enc.Close()
		}
		s.lanes <- l
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.resyncLoop(ctx) }()
	go func() { defer wg.Done(); s.tagLoop(ctx) }()
	s.sendLoop(ctx)
	wg.Wait()
	return nil
}

// sendLoop resumes where the server is, then ships every sealed segment,
// up to depth at once (flights.go); they are acknowledged in order.
func (s *Shipper) sendLoop(ctx context.Context) {
	log := s.logger()
	var backoff time.Duration
	resumed := false
	var refused [2]uint64 // first seq of the segment the server refused, and how often in a row
	var fl flights
	defer fl.drain()
	for ctx.Err() == nil {
		if !resumed {
			fl.drain()
			err := s.resume(ctx)
			switch {
			case errors.Is(err, ErrForbidden), errors.Is(err, ErrBadAck), errors.Is(err, ErrFailedOver):
				s.stopped(ctx, err)
				continue
			case err != nil:
				backoff = s.failed(ctx, backoff, err)
				continue
			}
			resumed = true
		}
		if fl.empty() {
			seg, err := s.nextSegment(ctx)
			if errors.Is(err, ErrFailedOver) {
				resumed = false
				s.stopped(ctx, err)
				continue
			}
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, tracker.ErrClosed) {
					log.Error("waiting for a segment", "err", err)
				}
				return
			}
			fl.launch(ctx, s, seg, false)
		}
		s.topUp(ctx, &fl)
		seg, err := fl.next()
		if err != nil {
			fl.drain() // they follow a segment the server did not take
		}
		switch {
		case err == nil:
			backoff = 0
			if err := s.Volume.Ack(seg.FirstSeq); err != nil {
				log.Error("ack segment", "first_seq", seg.FirstSeq, "err", err)
				resumed = false
			}
		case errors.Is(err, ErrChecksum):
			s.mu.Lock()
			s.status.Resends++
			s.mu.Unlock()
			if refused[0] != seg.FirstSeq {
				refused = [2]uint64{seg.FirstSeq, 0}
			}
			if refused[1]++; refused[1] >= 3 && s.damagedLocally(seg) {
				resumed = false // dropped; start again from the server's state
				continue
			}
			log.Warn("process server refused a damaged segment; resending", "first_seq", seg.FirstSeq, "err", err)
			backoff = s.failed(ctx, min(backoff, 100*time.Millisecond), err)
		case errors.Is(err, ErrGap):
			resumed = false // ask the server where it is
			backoff = s.failed(ctx, backoff, err)
		case errors.Is(err, ErrForbidden), errors.Is(err, ErrBadAck), errors.Is(err, ErrFailedOver):
			resumed = false
			s.stopped(ctx, err)
		default:
			backoff = s.failed(ctx, backoff, err)
		}
	}
}

// resume asks the server how far it has the volume and acknowledges the
// local segments it already holds (a restart after the server spooled a
// segment but before the agent recorded the acknowledgement).
func (s *Shipper) resume(ctx context.Context) error {
	st, err := s.remoteStatus(ctx)
	if err != nil {
		return err
	}
	s.onSite(st)
	depth := 1 // a server that does not say takes one segment at a time
	if st.SegmentsInFlight > 1 {
		depth = min(cap(s.lanes), st.SegmentsInFlight)
	}
	s.mu.Lock()
	s.depth = depth
	s.mu.Unlock()
	for _, r := range st.Recovery {
		if r.Kind == RecoveryFailover {
			return failedOverError(r)
		}
	}
	if err := s.checkSite(st.SpooledGeneration, st.SpooledSeq); err != nil {
		return err
	}
	if acked := s.Volume.Status().AckedSeq; st.SpooledSeq < acked && acked > s.BaseSeq {
		if err := s.replicaBehind(st, acked); err != nil {
			return err
		}
	}
	for _, seg := range s.Volume.Segments() {
		if seg.LastSeq > st.SpooledSeq {
			break
		}
		if seg.Generation > st.SpooledGeneration {
			return fmt.Errorf("%w: the site has generation %d up to seq %d, but this agent's segment %d..%d is generation %d: "+
				"the site cannot hold it; nothing is deleted from the journal", ErrBadAck, st.SpooledGeneration, st.SpooledSeq,
				seg.FirstSeq, seg.LastSeq, seg.Generation)
		}
		if err := s.Volume.Ack(seg.FirstSeq); err != nil {
			return err
		}
		s.acked(seg)
		s.logger().Info("segment already at the process server", "first_seq", seg.FirstSeq, "last_seq", seg.LastSeq)
	}
	s.setConnected(nil)
	return nil
}

// replicaBehind handles a replica that lacks records the agent was told
// it had (a new or restored replica, another process server): shipping the
// journal on top of it would make recovery points of a volume that never
// was, so every region is copied again instead.
func (s *Shipper) replicaBehind(st VolumeStatus, acked uint64) error {
	s.logger().Error("replica is behind what it acknowledged; full resync", "server_seq", st.SpooledSeq,
		"server_generation", st.SpooledGeneration, "acked_seq", acked)
	return s.resyncAll(fmt.Sprintf("the process server has this volume up to seq %d (generation %d) but had acknowledged seq %d: "+
		"a new or restored replica; every region is copied again", st.SpooledSeq, st.SpooledGeneration, acked))
}

// resyncAll makes every region dirty for a resync in a new generation and
// drops the journal written so far unshipped: it cannot be applied.
func (s *Shipper) resyncAll(reason string) error { return Resync(s.Volume, true, reason) }

// Resync starts a resync of v in a new generation and drops the journal
// written so far unshipped: every region when full, else the regions the
// dirty bitmap holds (what the site has not confirmed it has). A shipper
// of v must not be running: the next one to run copies the regions.
func Resync(v *tracker.Volume, full bool, reason string) error {
	var last uint64
	var err error
	if full {
		last, err = v.ResyncAll(reason)
	} else {
		last, err = v.ResyncRanges(nil, reason)
	}
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	for _, seg := range v.Segments() {
		if seg.LastSeq > last {
			break
		}
		if err := v.Ack(seg.FirstSeq); err != nil {
			return fmt.Errorf("drop journal segment %d..%d: %w", seg.FirstSeq, seg.LastSeq, err)
		}
	}
	return nil
}

// damagedLocally checks a segment the server keeps refusing: when the
// agent's own copy fails its record checksums (a bad disk on the protected
// server), resending cannot help. Its records are lost, so every region is
// copied again (ResyncAll) and the damaged journal is dropped. It returns
// true when it did that.
func (s *Shipper) damagedLocally(seg hrl.SegmentInfo) bool {
	f, err := s.Volume.OpenSegment(seg)
	if err != nil {
		return false
	}
	defer f.Close()
	if size, err := f.Size(); err != nil || size < seg.Size {
		return false // as unreadable as before: not known to be damaged
	}
	if _, err = hrl.Scan(f, seg.Size, seg.Path); err == nil {
		return false
	}
	s.logger().Error("journal segment damaged on the agent's disk; full resync", "segment", seg.Path, "err", err)
	if err := s.resyncAll(fmt.Sprintf("journal segment %s is damaged on this host (%v)", seg.Path, err)); err != nil {
		s.logger().Error("full resync", "err", err)
		return false
	}
	return true
}

// stopped records why the site refuses this volume (it belongs to another
// machine there, or the site's answers do not match this journal): the
// volume is not shipped, its journal stays (and, past the quota, its dirty
// regions are tracked), and the site is asked again every MaxBackoff, so
// that an admin's fix on the site (a reassignment) resumes it. Logged once
// per episode.
func (s *Shipper) stopped(ctx context.Context, err error) {
	s.errs.addErr(err)
	s.mu.Lock()
	first := s.status.Stopped == ""
	s.status.Connected, s.status.LastError, s.status.Stopped = false, err.Error(), err.Error()
	s.mu.Unlock()
	if first {
		level := slog.LevelError
		if errors.Is(err, ErrFailedOver) { // an admin's decision, not a fault
			level = slog.LevelWarn
		}
		s.logger().Log(context.Background(), level, "replication of this volume stopped; the journal is kept and the site is asked again",
			"retry_every", s.maxBackoff(), "err", err)
	}
	sleepCtx(ctx, s.maxBackoff())
}

// failed records err, sleeps the next backoff (exponential with jitter,
// capped) and returns it.
func (s *Shipper) failed(ctx context.Context, backoff time.Duration, err error) time.Duration {
	s.errs.addErr(err)
	s.setConnected(err)
	next := min(max(2*backoff, 250*time.Millisecond), s.maxBackoff())
	if errors.Is(err, ErrSlowDown) {
		next = max(next, time.Second)
	}
	d := next/2 + rand.N(next/2+1)
	s.logger().Warn("shipping paused", "retry_in", d.Round(time.Millisecond), "err", err)
	sleepCtx(ctx, d)
	return next
}

func (s *Shipper) maxBackoff() time.Duration {
	if s.MaxBackoff <= 0 {
		return DefaultMaxBackoff
	}
	return s.MaxBackoff
}

func (s *Shipper) setConnected(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.Connected = err == nil
	s.status.SiteDiskFull = ""
	if errors.Is(err, ErrSiteDiskFull) {
		s.status.SiteDiskFull = err.Error()
	}
	if err != nil {
		s.status.LastError = err.Error()
		return
	}
	s.status.LastError = ""
	if s.status.Stopped != "" {
		s.status.Stopped = ""
		s.logger().Info("the site accepts this volume again; replication resumes")
	}
}

func (s *Shipper) connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status.Connected
}

// tagAt is a tag's seq and when it was taken.
type tagAt struct {
	seq uint64
	at  time.Time
}

// maxPendingTags bounds Shipper.tags while the site is unreachable; the
// oldest are forgotten (the RPO then reads a little high, never low).
const maxPendingTags = 4096

// acked records a segment the server has.
func (s *Shipper) acked(seg hrl.SegmentInfo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.AckedSeq = seg.LastSeq
	s.status.LastAck = time.Now()
	n := 0
	for ; n < len(s.tags) && s.tags[n].seq <= seg.LastSeq; n++ {
		// A tag before the segment was in a journal dropped for a resync:
		// the server never had it.
		if s.tags[n].seq >= seg.FirstSeq {
			s.status.LastTagSeq, s.status.LastTagAcked = s.tags[n].seq, s.tags[n].at
		}
	}
	s.tags = s.tags[n:]
	if p := s.status.Resync; p != nil && p.PointSeq != 0 && p.PointSeq <= seg.LastSeq {
		s.status.Resync = nil // the resync's point is on the server
	}
}

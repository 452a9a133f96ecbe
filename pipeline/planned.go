package pipeline

import (
	"context"
	"errors"
	"strings"
	"time"

	"lifeboat/hrl"
)

// A planned failover, the agent's side.
//
// The site asks for it in the volume's status (VolumeStatus.PlannedFailover,
// a token), which the shipper reads when it resumes and every PollInterval
// while it has nothing to send. The agent then makes the volume read-only
// (writes get EPERM; the writes in flight finish first), flushes it and
// takes a tag named PlannedTagPrefix+token, which it ships like any other.
// The site fails over to exactly that point, so every write the source
// acknowledged is in the failover volume. The volume stays read-only while
// the site reports the planned failover; if the site withdraws the request
// (it timed out), writes are allowed again.

// PlannedTagPrefix starts the name of a planned failover's tag.
const PlannedTagPrefix = "planned failover "

// DefaultPollInterval is how often an idle shipper asks the site for its
// requests (a planned failover).
const DefaultPollInterval = 2 * time.Second

// plannedReason is the volume's read-only reason for a planned failover
// token; plannedToken reads it back.
func plannedReason(token string) string {
	return "a planned failover (" + token + ") moves it to the recovery site"
}

func plannedToken(reason string) (string, bool) {
	rest, ok := strings.CutPrefix(reason, "a planned failover (")
	if !ok {
		return "", false
	}
	token, _, ok := strings.Cut(rest, ")")
	return token, ok
}

// onSite acts on what the site says of the volume: a planned failover it
// asks for, one it withdrew (the volume takes writes again, also after a
// restart of the agent meanwhile), one it completed (the volume stays
// read-only).
func (s *Shipper) onSite(st VolumeStatus) {
	v := s.Volume
	plannedDone := false
	for _, r := range st.Recovery {
		if r.Kind == RecoveryFailover && r.Planned {
			plannedDone = true
		}
	}
	token, planned := plannedToken(v.ReadOnly())
	switch {
	case plannedDone:
		if !planned {
			s.setReadOnly(plannedReason("completed"))
		}
	case st.PlannedFailover != "" && st.PlannedFailover != token:
		s.prepare(st.PlannedFailover)
	case st.PlannedFailover == "" && planned:
		if s.setReadOnly("") {
			s.logger().Warn("the site withdrew its planned failover (it did not complete in time); the volume takes writes again")
		}
	}
}

// setReadOnly sets the volume's read-only reason; false (logged) when it
// could not be recorded.
func (s *Shipper) setReadOnly(reason string) bool {
	if err := s.Volume.SetReadOnly(reason); err != nil {
		s.logger().Error("planned failover", "err", err)
		return false
	}
	return true
}

// prepare stops writes, flushes and tags for the planned failover token.
func (s *Shipper) prepare(token string) {
	v := s.Volume
	log := s.logger().With("token", token)
	log.Warn("planned failover requested by the site: the volume is read-only from now on")
	if !s.setReadOnly(plannedReason(token)) {
		return
	}
	if err := v.Flush(); err != nil {
		log.Error("planned failover: flush failed; the site will time out and the volume takes writes again", "err", err)
		return
	}
	seq, err := v.Tag(hrl.TagCrash, PlannedTagPrefix+token)
	if err != nil {
		log.Error("planned failover: tag failed; the site will time out and the volume takes writes again", "err", err)
		return
	}
	log.Info("planned failover: every write is flushed and tagged; shipping it", "tag_seq", seq)
}

// poll asks the site about the volume while nothing is shipped; a
// failover there is returned (ErrFailedOver), so that an idle agent says
// so too.
func (s *Shipper) poll(ctx context.Context) error {
	st, err := s.remoteStatus(ctx)
	if err != nil {
		return nil // the next send or resume says why
	}
	s.onSite(st)
	for _, r := range st.Recovery {
		if r.Kind == RecoveryFailover {
			return failedOverError(r)
		}
	}
	return nil
}

// nextSegment waits for the next sealed segment, polling the site every
// PollInterval, whether segments come or not (a volume written all the
// time must see a planned failover too); the site's failover of the
// volume ends the wait with ErrFailedOver.
func (s *Shipper) nextSegment(ctx context.Context) (hrl.SegmentInfo, error) {
	every := s.PollInterval
	if every <= 0 {
		every = DefaultPollInterval
	}
	for {
		if time.Since(s.lastPoll) >= every {
			s.lastPoll = time.Now()
			if err := s.poll(ctx); err != nil {
				return hrl.SegmentInfo{}, err
			}
		}
		wctx, cancel := context.WithTimeout(ctx, every-time.Since(s.lastPoll))
		seg, err := s.Volume.NextSegment(wctx, 0)
		cancel()
		if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
			return seg, err
		}
	}
}

// IsPlannedTag reports whether a tag name is a planned failover's, and its
// token.
func IsPlannedTag(name string) (string, bool) {
	return strings.CutPrefix(name, PlannedTagPrefix)
}

package control

import (
	"encoding/json"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Health of an item, a machine or a process server.
type Health string

// Healths, from best to worst.
const (
	Healthy  Health = "Healthy"
	Warning  Health = "Warning"
	Critical Health = "Critical"
)

func (h Health) rank() int {
	switch h {
	case Warning:
		return 1
	case Critical:
		return 2
	}
	return 0
}

// worse returns the worse of two healths.
func worse(a, b Health) Health {
	if b.rank() > a.rank() {
		return b
	}
	return a
}

// Code is an event's stable identifier; scripts match on it.
type Code string

// Event codes. Their meaning never changes; new ones get new codes.
const (
	CodeNoHeartbeat     Code = "LB1001" // an agent stopped sending heartbeats
	CodeRPOThreshold    Code = "LB1002" // an item's RPO is over its policy's threshold
	CodeReplicationStop Code = "LB1003" // the site refuses an item's journal
	CodeInitialStuck    Code = "LB1004" // initial replication made no progress
	CodeJournalQuota    Code = "LB1005" // journal quota exceeded: bitmap mode
	CodeSpoolWarning    Code = "LB1006" // process server spool over 70 %
	CodeSpoolCritical   Code = "LB1007" // process server spool over 80 %
	CodeCertExpiry      Code = "LB1008" // a machine's certificate expires soon
	CodeRegisterRefused Code = "LB1009" // a registration with a wrong passphrase
	CodeMachineRemoved  Code = "LB1010" // a machine was removed (informational)
	CodeVolumeError     Code = "LB1011" // the agent cannot open or serve a volume
	CodePSDown          Code = "LB1012" // a process server stopped sending heartbeats
	CodeItemMoved       Code = "LB1013" // an item moved to another process server
)

// codeInfo is an event code's severity and one line of advice.
var codeInfo = map[Code]struct {
	Severity Health
	Advice   string
}{
	CodeNoHeartbeat:     {Critical, "check that 'lifeboat agent' runs on the machine (systemctl status lifeboat-agent) and reaches the configuration server's port"},
	CodeRPOThreshold:    {Warning, "check the link to the site and the agent's upload rate ('lifeboat status'); raise the policy's rpo-threshold if the churn is expected"},
	CodeReplicationStop: {Critical, "read the reason; the journal is kept on the machine until it is fixed"},
	CodeInitialStuck:    {Warning, "the initial replication copied nothing for a while: check the agent's log and its link to the process server"},
	CodeJournalQuota:    {Warning, "the agent tracks dirty regions only and resyncs them later; raise --journal-quota or fix the link"},
	CodeSpoolWarning:    {Warning, "the process server's spool is filling: check the target's speed, or add space or a process server"},
	CodeSpoolCritical:   {Critical, "agents are about to be throttled: check the target, or add space or a process server"},
	CodeCertExpiry:      {Warning, "register the machine again before its certificate expires ('lifeboat machine remove', then 'lifeboat agent register')"},
	CodeRegisterRefused: {Warning, "someone tried to register with a wrong passphrase; if it was not you, look at the address"},
	CodeMachineRemoved:  {Healthy, "its certificate is revoked; register it again to protect it"},
	CodeVolumeError:     {Critical, "the agent cannot open the volume's path: check that it exists and the agent may open it"},
	CodePSDown:          {Critical, "its items move to another process server; check that 'lifeboat process-server' runs there and reaches the configuration server"},
	CodeItemMoved:       {Warning, "the agent now ships to the named process server; a resync follows if the replica lacks what the old one had spooled"},
}

// Event is something the admin should know, raised when a condition
// starts and cleared when it ends (one-off events are cleared at once).
type Event struct {
	ID       uint64     `json:"id"`
	Code     Code       `json:"code"`
	Severity Health     `json:"severity"`
	Subject  string     `json:"subject"` // MACHINE, MACHINE/VOLUME or process-server NAME
	Message  string     `json:"message"`
	Advice   string     `json:"advice"`
	Raised   time.Time  `json:"raised"`
	Cleared  *time.Time `json:"cleared,omitempty"`
}

// addEvent stores a new event and returns it with its id.
func addEvent(tx *bolt.Tx, code Code, subject, msg string, now time.Time, cleared bool) (Event, error) {
	b := tx.Bucket(bucketEvents)
	id, err := b.NextSequence()
	if err != nil {
		return Event{}, err
	}
	info := codeInfo[code]
	e := Event{ID: id, Code: code, Severity: info.Severity, Subject: subject, Message: msg, Advice: info.Advice, Raised: now.UTC()}
	if cleared {
		t := now.UTC()
		e.Cleared = &t
	}
	v, err := json.Marshal(e)
	if err != nil {
		return Event{}, err
	}
	return e, b.Put(seqKey(id), v)
}

// clearEvent marks an event cleared.
func clearEvent(tx *bolt.Tx, id uint64, now time.Time) error {
	b := tx.Bucket(bucketEvents)
	v := b.Get(seqKey(id))
	if v == nil {
		return nil
	}
	var e Event
	if err := json.Unmarshal(v, &e); err != nil {
		return err
	}
	t := now.UTC()
	e.Cleared = &t
	nv, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return b.Put(seqKey(id), nv)
}

// Events lists the events raised or cleared at or after since, oldest first.
func (s *Store) Events(since time.Time) ([]Event, error) {
	var out []Event
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).ForEach(func(_, v []byte) error {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if !e.Raised.Before(since) || (e.Cleared != nil && !e.Cleared.Before(since)) {
				out = append(out, e)
			}
			return nil
		})
	})
	return out, err
}

// Event records a one-off event (cleared when raised).
func (s *Store) Event(code Code, subject, msg string, now time.Time) (Event, error) {
	var e Event
	err := s.update(func(tx *bolt.Tx) (err error) { e, err = addEvent(tx, code, subject, msg, now, true); return })
	return e, err
}

// openEvents returns the events not cleared, by code and subject.
func (s *Store) openEvents() (map[condition]Event, error) {
	open := map[condition]Event{}
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).ForEach(func(_, v []byte) error {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if e.Cleared == nil {
				open[condition{e.Code, e.Subject}] = e
			}
			return nil
		})
	})
	return open, err
}

// condition is an ongoing problem: a code about a subject.
type condition struct {
	Code    Code
	Subject string
}

// reconcile raises an event for each condition in current that is not
// open and, with clear, clears each open one that is not in current, in
// one transaction. Right after a start nothing is cleared: what the
// heartbeats tell is not known yet, and clearing then raising again would
// make every open event flap at each restart.
func (s *Store) reconcile(current map[condition]string, t time.Time, clear bool) ([]Event, error) {
	open, err := s.openEvents()
	if err != nil {
		return nil, err
	}
	var changed []Event
	err = s.update(func(tx *bolt.Tx) error {
		for c, msg := range current {
			if _, ok := open[c]; ok {
				continue
			}
			e, err := addEvent(tx, c.Code, c.Subject, msg, t, false)
			if err != nil {
				return err
			}
			changed = append(changed, e)
		}
		for c, e := range open {
			if _, ok := current[c]; ok || !clear {
				continue
			}
			if err := clearEvent(tx, e.ID, t); err != nil {
				return err
			}
			cl := t.UTC()
			e.Cleared = &cl
			changed = append(changed, e)
		}
		return nil
	})
	return changed, err
}

// EventRetention is how long a cleared event is kept.
const EventRetention = 30 * 24 * time.Hour

// pruneEvents deletes the events cleared before cutoff.
func (s *Store) pruneEvents(cutoff time.Time) (int, error) {
	n := 0
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		var drop [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			if e.Cleared != nil && e.Cleared.Before(cutoff) {
				drop = append(drop, append([]byte(nil), k...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(drop)
		return nil
	})
	return n, err
}

// OpenEvents lists the events raised and not cleared.
func (s *Server) OpenEvents() ([]Event, error) {
	open, err := s.Store.openEvents()
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(open))
	for _, e := range open {
		out = append(out, e)
	}
	return out, nil
}

package control

import (
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"lifeboat/pipeline/pki"
	"lifeboat/targets"
)

// Policy is how a protected item is replicated and judged. Durations are
// whole seconds in JSON, for scripts.
type Policy struct {
	Name string `json:"name"`
	// RPOThreshold raises a Warning when an item's RPO passes it (it
	// changes nothing else).
	RPOThreshold Seconds `json:"rpo_threshold_seconds"`
	// Retention is how long recovery points are kept (tiered thinning).
	Retention Seconds `json:"retention_seconds"`
	// CrashInterval is how often the agent takes a crash-consistent point.
	CrashInterval Seconds `json:"crash_consistent_interval_seconds"`
	// Compression on the wire: none, fastest, default, better, best.
	Compression string `json:"compression"`
	// EncryptionKey is "" (the replica is stored as the target stores it)
	// or "site": the replica must be encrypted with the key the site's
	// target holds; protect refuses it on a site without one.
	EncryptionKey string `json:"encryption_key"`
	// Failback is the policy of reverse replication after a reprotect,
	// created with the policy.
	Failback FailbackPolicy `json:"failback"`
	Created  time.Time      `json:"created"`
	Updated  time.Time      `json:"updated"`
}

// FailbackPolicy is the reverse direction's part of a policy.
type FailbackPolicy struct {
	Name          string  `json:"name"`
	RPOThreshold  Seconds `json:"rpo_threshold_seconds"`
	CrashInterval Seconds `json:"crash_consistent_interval_seconds"`
}

// Seconds is a duration stored and shown as whole seconds.
type Seconds int64

// Duration is s as a time.Duration.
func (s Seconds) Duration() time.Duration { return time.Duration(s) * time.Second }

// Ranges of the policy fields; an out-of-range value is refused with them.
var (
	RangeRPOThreshold  = [2]time.Duration{5 * time.Second, 24 * time.Hour}
	RangeRetention     = [2]time.Duration{time.Hour, 360 * time.Hour}
	RangeCrashInterval = [2]time.Duration{time.Second, time.Hour}
	Compressions       = []string{"none", "fastest", "default", "better", "best"}
	EncryptionKeys     = []string{"", "site"}
)

// Policy defaults.
var DefaultPolicy = Policy{RPOThreshold: 15 * 60, Retention: 24 * 3600, CrashInterval: 10, Compression: "fastest"}

// ErrInvalid is wrapped by the error for a value out of its range; the
// message names the field and the allowed range. The API answers 400.
var ErrInvalid = errors.New("invalid")

// ErrExists is wrapped by the error for a name already in use (409).
var ErrExists = errors.New("already exists")

// ErrForbidden is wrapped by the error for what the caller may not do (403).
var ErrForbidden = errors.New("forbidden")

// ErrInUse is wrapped by the error for deleting what items use (409).
var ErrInUse = errors.New("in use")

func checkRange(field string, d time.Duration, r [2]time.Duration) error {
	if d < r[0] || d > r[1] || d%time.Second != 0 {
		return fmt.Errorf("%w: %s %v: allowed range %v to %v, in whole seconds", ErrInvalid, field, d, r[0], r[1])
	}
	return nil
}

// Validate checks every field against its allowed range.
func (p Policy) Validate() error {
	if err := pki.CheckName(p.Name); err != nil {
		return fmt.Errorf("%w: policy name: %v", ErrInvalid, err)
	}
	errs := []error{
		checkRange("rpo-threshold", p.RPOThreshold.Duration(), RangeRPOThreshold),
		checkRange("retention", p.Retention.Duration(), RangeRetention),
		checkRange("crash-interval", p.CrashInterval.Duration(), RangeCrashInterval),
		checkRange("failback rpo-threshold", p.Failback.RPOThreshold.Duration(), RangeRPOThreshold),
		checkRange("failback crash-interval", p.Failback.CrashInterval.Duration(), RangeCrashInterval),
		checkOneOf("compression", p.Compression, Compressions),
		checkOneOf("encryption-key", p.EncryptionKey, EncryptionKeys),
	}
	return errors.Join(errs...)
}

func checkOneOf(field, v string, allowed []string) error {
	for _, a := range allowed {
		if v == a {
			return nil
		}
	}
	return fmt.Errorf("%w: %s %q: allowed values %q", ErrInvalid, field, v, allowed)
}

// withFailback fills the failback policy from the forward one where unset.
func (p *Policy) withFailback() {
	if p.Failback.Name == "" {
		p.Failback.Name = p.Name + "-failback"
	}
	if p.Failback.RPOThreshold == 0 {
		p.Failback.RPOThreshold = p.RPOThreshold
	}
	if p.Failback.CrashInterval == 0 {
		p.Failback.CrashInterval = p.CrashInterval
	}
}

// CreatePolicy validates and stores a new policy with its failback policy.
func (s *Store) CreatePolicy(p Policy, now time.Time) (Policy, error) {
	p.withFailback()
	if err := p.Validate(); err != nil {
		return p, err
	}
	p.Created, p.Updated = now.UTC(), now.UTC()
	err := s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketPolicies).Get([]byte(p.Name)) != nil {
			return fmt.Errorf("%w: policy %s; change it with 'lifeboat policy update'", ErrExists, p.Name)
		}
		return put(tx, bucketPolicies, p.Name, p)
	})
	return p, err
}

// UpdatePolicy applies change to a stored policy, validates and stores it.
func (s *Store) UpdatePolicy(name string, change func(*Policy), now time.Time) (Policy, error) {
	var p Policy
	err := s.update(func(tx *bolt.Tx) error {
		if err := get(tx, bucketPolicies, name, &p); err != nil {
			return err
		}
		change(&p)
		p.Name = name
		if err := p.Validate(); err != nil {
			return err
		}
		p.Updated = now.UTC()
		return put(tx, bucketPolicies, name, p)
	})
	return p, err
}

// Policy returns a stored policy.
func (s *Store) Policy(name string) (Policy, error) {
	var p Policy
	err := s.view(func(tx *bolt.Tx) error { return get(tx, bucketPolicies, name, &p) })
	return p, err
}

// Policies lists the policies by name.
func (s *Store) Policies() ([]Policy, error) {
	var ps []Policy
	err := s.view(func(tx *bolt.Tx) (err error) { ps, err = list[Policy](tx, bucketPolicies); return })
	return ps, err
}

// DeletePolicy removes a policy no item uses.
func (s *Store) DeletePolicy(name string) error {
	return s.update(func(tx *bolt.Tx) error {
		var p Policy
		if err := get(tx, bucketPolicies, name, &p); err != nil {
			return err
		}
		items, err := list[Item](tx, bucketItems)
		if err != nil {
			return err
		}
		var users []string
		for _, it := range items {
			if it.Policy == name {
				users = append(users, it.Key())
			}
		}
		if len(users) > 0 {
			return fmt.Errorf("%w: policy %s protects %q; unprotect them or move them to another policy first", ErrInUse, name, users)
		}
		return tx.Bucket(bucketPolicies).Delete([]byte(name))
	})
}

// itemPolicy is the policy of the item MACHINE/VOLUME.
func (s *Server) itemPolicy(machine, volume string) (Policy, error) {
	var it Item
	var p Policy
	err := s.Store.view(func(tx *bolt.Tx) error {
		if err := get(tx, bucketItems, machine+"/"+volume, &it); err != nil {
			return err
		}
		return get(tx, bucketPolicies, it.Policy, &p)
	})
	return p, err
}

// RetentionFor is an item's retention, its policy's; ok is false for a
// volume that no item names (it keeps the server's --retention).
func (s *Server) RetentionFor(machine, volume string) (targets.Retention, bool) {
	p, err := s.itemPolicy(machine, volume)
	if err != nil {
		return targets.Retention{}, false
	}
	return targets.Retention{Window: p.Retention.Duration()}, true
}

// FailbackTagInterval is an item's failback policy's crash-consistent
// interval, for its reverse replication after a reprotect.
func (s *Server) FailbackTagInterval(machine, volume string) (time.Duration, bool) {
	p, err := s.itemPolicy(machine, volume)
	if err != nil {
		return 0, false
	}
	return p.Failback.CrashInterval.Duration(), true
}

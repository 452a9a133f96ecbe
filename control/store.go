// Package control is the configuration server: the site's registry of
// machines, policies and protected items, their health and events, and the
// jobs that change them. Its state lives in one bbolt file under the
// server's data directory; the CLI is a client of its HTTPS JSON API.
package control

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// StoreFile is the store's file name under the data directory.
const StoreFile = "control.db"

// Buckets of the store. Keys are names (machines, policies), MACHINE/VOLUME
// (items), a big-endian sequence number (events, jobs) or a fixed key (meta).
var (
	bucketMeta     = []byte("meta")
	bucketMachines = []byte("machines")
	bucketPolicies = []byte("policies")
	bucketItems    = []byte("items")
	bucketEvents   = []byte("events")
	bucketJobs     = []byte("jobs")
	bucketPS       = []byte("process-servers")
	allBuckets     = [][]byte{bucketMeta, bucketMachines, bucketPolicies, bucketItems, bucketEvents, bucketJobs, bucketPS}
)

// ErrNotFound is wrapped by the error for a key a bucket does not have.
var ErrNotFound = errors.New("not found")

// Store is the configuration server's state. Every update is one bbolt
// transaction, fsynced before it returns, so a crash keeps either the old
// or the new state, never a mix.
type Store struct {
	db *bolt.DB
}

// OpenStore opens (creating) DATA-DIR/control.db. A second process on the
// same file waits at most a second and then fails, naming the file.
func OpenStore(dataDir string) (*Store, error) {
	path := filepath.Join(dataDir, StoreFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: another lifeboat server holds it; stop that one first", path)
		}
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		// This process holds the file: a job still running is one the
		// previous process did not finish.
		return failInterrupted(tx, time.Now())
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// get decodes the value of key in bucket into v.
func get(tx *bolt.Tx, bucket []byte, key string, v any) error {
	b := tx.Bucket(bucket).Get([]byte(key))
	if b == nil {
		return fmt.Errorf("%s %q: %w", bucket, key, ErrNotFound)
	}
	return json.Unmarshal(b, v)
}

// put stores v under key in bucket.
func put(tx *bolt.Tx, bucket []byte, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put([]byte(key), b)
}

// list decodes every value of bucket, in key order.
func list[T any](tx *bolt.Tx, bucket []byte) ([]T, error) {
	var out []T
	err := tx.Bucket(bucket).ForEach(func(_, v []byte) error {
		var t T
		if err := json.Unmarshal(v, &t); err != nil {
			return err
		}
		out = append(out, t)
		return nil
	})
	return out, err
}

// seqKey is the key of the nth record of a sequence bucket.
func seqKey(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

// view and update run fn in a read or a write transaction.
func (s *Store) view(fn func(tx *bolt.Tx) error) error   { return s.db.View(fn) }
func (s *Store) update(fn func(tx *bolt.Tx) error) error { return s.db.Update(fn) }

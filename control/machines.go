package control

import (
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Machine is a registered agent.
type Machine struct {
	Name         string    `json:"name"`
	Serial       string    `json:"serial"` // of its certificate, hexadecimal
	RegisteredAt time.Time `json:"registered_at"`
	CertExpires  time.Time `json:"certificate_expires"`
	// Address is where it registered from (for the admin's eyes only).
	Address string `json:"address"`
}

// MachineView is a machine with what its heartbeats say (the list's JSON).
type MachineView struct {
	Machine
	LastHeartbeat *time.Time `json:"last_heartbeat"`
	Version       string     `json:"agent_version,omitempty"`
	Items         int        `json:"protected_items"`
	Health        Health     `json:"health"`
}

// Item is a protected volume of a machine.
type Item struct {
	Machine string `json:"machine"`
	Volume  string `json:"volume"`
	// Path on the machine, and the size to create it with when it does
	// not exist (0: it must exist).
	Path   string `json:"path"`
	Size   int64  `json:"size,omitempty"`
	Policy string `json:"policy"`
	// ProcessServer is the data URL the agent ships to.
	ProcessServer string `json:"process_server"`
	Paused        bool   `json:"paused"`
	// Resync asks the agent for a resync each time it grows; it is a full
	// one while the agent has not done ResyncFullAt (else the dirty
	// regions).
	Resync uint64 `json:"resync_request"`
	// ResyncFullAt is the last request that asked for a full resync.
	ResyncFullAt uint64    `json:"resync_full_at,omitempty"`
	Created      time.Time `json:"created"`
}

// Key is MACHINE/VOLUME, the item's name.
func (it Item) Key() string { return it.Machine + "/" + it.Volume }

// AddMachine records a registration. A name in use is refused.
func (s *Store) AddMachine(m Machine) error {
	return s.update(func(tx *bolt.Tx) error {
		if err := nameFreeTx(tx, m.Name); err != nil {
			return err
		}
		return put(tx, bucketMachines, m.Name, m)
	})
}

// Machine returns a registered machine.
func (s *Store) Machine(name string) (Machine, error) {
	var m Machine
	err := s.view(func(tx *bolt.Tx) error { return get(tx, bucketMachines, name, &m) })
	return m, err
}

// Machines lists the registered machines by name.
func (s *Store) Machines() ([]Machine, error) {
	var ms []Machine
	err := s.view(func(tx *bolt.Tx) (err error) { ms, err = list[Machine](tx, bucketMachines); return })
	return ms, err
}

// RemoveMachine deletes a machine and its items, returning both.
func (s *Store) RemoveMachine(name string) (Machine, []Item, error) {
	var m Machine
	var gone []Item
	err := s.update(func(tx *bolt.Tx) error {
		if err := get(tx, bucketMachines, name, &m); err != nil {
			return err
		}
		items, err := list[Item](tx, bucketItems)
		if err != nil {
			return err
		}
		for _, it := range items {
			if it.Machine == name {
				gone = append(gone, it)
				if err := tx.Bucket(bucketItems).Delete([]byte(it.Key())); err != nil {
					return err
				}
			}
		}
		return tx.Bucket(bucketMachines).Delete([]byte(name))
	})
	return m, gone, err
}

// Protect stores a new item; its machine and policy must exist.
func (s *Store) Protect(it Item) error {
	return s.update(func(tx *bolt.Tx) error {
		var m Machine
		if err := get(tx, bucketMachines, it.Machine, &m); err != nil {
			return fmt.Errorf("%w: register it first with 'lifeboat agent register' on that machine", err)
		}
		var p Policy
		if err := get(tx, bucketPolicies, it.Policy, &p); err != nil {
			return fmt.Errorf("%w: create it first with 'lifeboat policy create'", err)
		}
		if tx.Bucket(bucketItems).Get([]byte(it.Key())) != nil {
			return fmt.Errorf("%w: %s is protected already; 'lifeboat unprotect' it first to change its path", ErrExists, it.Key())
		}
		items, err := list[Item](tx, bucketItems)
		if err != nil {
			return err
		}
		for _, o := range items {
			if o.Machine == it.Machine && o.Path == it.Path {
				return fmt.Errorf("%w: %s is protected already as %s", ErrExists, it.Path, o.Key())
			}
		}
		return put(tx, bucketItems, it.Key(), it)
	})
}

// UpdateItem applies change to a stored item.
func (s *Store) UpdateItem(key string, change func(*Item) error) (Item, error) {
	var it Item
	err := s.update(func(tx *bolt.Tx) error {
		if err := get(tx, bucketItems, key, &it); err != nil {
			return err
		}
		if err := change(&it); err != nil {
			return err
		}
		return put(tx, bucketItems, key, it)
	})
	return it, err
}

// Unprotect deletes an item.
func (s *Store) Unprotect(key string) (Item, error) {
	var it Item
	err := s.update(func(tx *bolt.Tx) error {
		if err := get(tx, bucketItems, key, &it); err != nil {
			return err
		}
		return tx.Bucket(bucketItems).Delete([]byte(key))
	})
	return it, err
}

// Items lists the items, by machine and volume.
func (s *Store) Items() ([]Item, error) {
	var its []Item
	err := s.view(func(tx *bolt.Tx) (err error) { its, err = list[Item](tx, bucketItems); return })
	slices.SortFunc(its, func(a, b Item) int {
		if a.Machine != b.Machine {
			return strings.Compare(a.Machine, b.Machine)
		}
		return strings.Compare(a.Volume, b.Volume)
	})
	return its, err
}

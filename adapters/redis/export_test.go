package inboxredis

// SetAfterSet makes c call f after each Set that returned nil, before it
// acknowledges the entries.
func SetAfterSet(c *Consumer, f func()) { c.afterSet = f }

// SetOnSet makes c call f after each Set, with the number of its records
// and its error.
func SetOnSet(c *Consumer, f func(records int, err error)) { c.onSet = f }

package inboxredis

// SetAfterSet makes c call f after each Set that returned nil, before it
// acknowledges the entries.
func SetAfterSet(c *Consumer, f func()) { c.afterSet = f }

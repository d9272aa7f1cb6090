/*
 * Lets Criterion start under ThreadSanitizer (make SANITIZE=thread); empty in
 * every other build.
 *
 * Criterion's sandbox (BoxFort) maps its shared arena at a random address
 * between 0x200000000000 and 0x600000000000, drawn with rand_r() and retried
 * ten times. Under TSan all of that range is shadow or protected memory, so
 * every try fails and the runner aborts with "Could not initialize
 * inheritable arena" (Criterion issue #274). The executable's rand_r()
 * takes precedence over libc's for libcriterion too; this one steers the
 * draw into TSan's application range for PIE executables
 * (0x550000000000-0x568000000000), 256 MiB steps from 0x560000000000.
 * Nothing else in the project calls rand_r().
 */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TU_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define TU_TSAN 1
#endif

#ifdef TU_TSAN
int rand_r(unsigned int *seed);

int rand_r(unsigned int *seed)
{
    /* BoxFort maps at 0x200000000000 + (r & 0x3fffff) * 16 MiB. */
    *seed += 1;
    return 0x360000 + (int)(*seed % 0x80) * 0x10;
}
#endif

//! Binding through hwloc changes the whole process, so this runs alone in its own test binary
//! (no other test threads whose creation could race with the binding).

use bqrt::topology::pinning::{apply, current_cpuset, PinPlan};

#[test]
fn apply_binds_through_hwloc_and_restores() {
    let current = current_cpuset().unwrap();
    let all = PinPlan::Core {
        core_os_index: 7,
        pus: current.clone(),
        wrapped: false,
    };
    assert_eq!(apply(&all), Ok(Some(7)));
    assert_eq!(current_cpuset().unwrap(), current);
    let one = PinPlan::Core {
        core_os_index: 0,
        pus: vec![current[0]],
        wrapped: false,
    };
    let narrowed = apply(&one).and_then(|_| current_cpuset());
    assert_eq!(apply(&all), Ok(Some(7)));
    assert_eq!(narrowed, Ok(vec![current[0]]));
    assert_eq!(current_cpuset().unwrap(), current);
    assert_eq!(
        apply(&PinPlan::Leave {
            reason: "launcher".into()
        }),
        Ok(None)
    );
}
